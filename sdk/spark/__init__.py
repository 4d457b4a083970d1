"""The owner's results in Spark: Parquet-MR's KMS client for the owner's key broker (OwnerBrokerKmsClient.java,
beside this file), built into a jar, and the read options that point Spark's PME reader at the broker.

Spark decrypts the result objects itself (PME, like pyarrow); the client only unwraps each file's key-encryption
key through the broker's owner unwrap (wire/owner_unwrap.py), as `sdk.broker_admin.BrokerAdmin.unwrap` does.
Nothing here imports pyspark: it is only located, for the jars to compile against.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from sdk.party import Party

SOURCE = Path(__file__).with_name("OwnerBrokerKmsClient.java")
CLIENT_CLASS = "cscore.spark.OwnerBrokerKmsClient"
CRYPTO_FACTORY = "org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory"
JAVA_RELEASE = "11"  # java.net.http; Spark 4 runs on 17+, Spark 3 on 11


class SparkClientBuildError(RuntimeError):
    """The KMS client jar could not be built: no JDK, no Spark jars, or javac refused the source."""


def spark_jars() -> Path:
    """The jars of the installed pyspark (`pyspark/jars`); raises SparkClientBuildError when pyspark is missing."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise SparkClientBuildError("pyspark is not installed: `uv sync` (the `spark` dependency group) installs it")
    jars = Path(next(iter(spec.submodule_search_locations))) / "jars"
    if not any(jars.glob("parquet-hadoop-*.jar")):
        raise SparkClientBuildError(f"{jars}: expected Spark's jars (parquet-hadoop-*.jar), found none")
    return jars


def build_client_jar(out: Path, *, classpath: Path | None = None) -> Path:
    """Compile OwnerBrokerKmsClient.java against `classpath` (a folder of jars; default: pyspark's) into the jar
    `out` (written whole or not at all) and return it. Raises SparkClientBuildError naming what is missing, or
    with javac's message."""
    jars = classpath or spark_jars()
    javac, jar = shutil.which("javac"), shutil.which("jar")
    if javac is None or jar is None:
        raise SparkClientBuildError("javac and jar not found: install a JDK (11 or later; Spark 4 needs 17)")
    with tempfile.TemporaryDirectory(prefix="cscore-spark-") as work:
        classes = Path(work) / "classes"
        built = subprocess.run(
            [
                javac,
                "--release",
                JAVA_RELEASE,
                "-Xlint:all,-path",
                "-Werror",
                "-cp",
                str(jars / "*"),
                "-d",
                str(classes),
                str(SOURCE),
            ],
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            raise SparkClientBuildError(f"javac {SOURCE.name}: {built.stderr.strip() or built.stdout.strip()}")
        partial = Path(work) / out.name
        subprocess.run(
            [jar, "--create", "--file", str(partial), "-C", str(classes), "."], check=True, capture_output=True
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, out)
    return out


def read_options(owner: Party, batch_id: str, *, ca_bundle: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Options for `spark.read.options(**...).parquet(path)` that decrypt `batch_id`'s result objects with the
    owner's broker: the PME crypto factory, this KMS client, the broker's URL and the owner's admin token (Spark
    redacts option values named like `token` in its UI and logs), the broker's CA bundle (`ca_bundle`, else
    $CSCORE_BROKER_CA, else none: the JVM's trust store) and the batch, named in the broker's decision log.
    The jar (`build_client_jar`) must be on the classpath (`spark.driver.extraClassPath`, executors' too)."""
    token_path = owner.home / "broker-admin-token"
    if not token_path.exists():
        raise RuntimeError(f"no broker admin token at {token_path}: the key broker's operator must hand it over")
    options = {
        "parquet.crypto.factory.class": CRYPTO_FACTORY,
        "parquet.encryption.kms.client.class": CLIENT_CLASS,
        "parquet.encryption.kms.instance.url": owner.broker_url,
        "parquet.encryption.key.access.token": token_path.read_text().strip(),
        "cscore.batch.id": batch_id,
    }
    ca = ca_bundle if ca_bundle is not None else os.environ.get("CSCORE_BROKER_CA")
    if ca:
        options["cscore.broker.ca"] = os.fspath(ca)
    return options
