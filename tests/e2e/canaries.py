"""Unique strings planted in the model and in emails; none may ever reach a platform-side store."""

MODEL_CANARY = "CANARY-MODEL-7f3e9a1c55d04b2e"
EMAIL_CANARIES = [f"CANARY-EMAIL-{i}-b81d2c4f9e" for i in range(5)]
FLAG_CANARY = "CANARY-FLAG-3c9d0e71a2"  # in an owner's reader flag: flags are as secret as the emails
