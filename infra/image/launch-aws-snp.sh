#!/usr/bin/env bash
# Launch the worker image as an SEV-SNP instance on AWS EC2 (m6a/c6a/r6a, regions with AmdSevSnp).
#
#   infra/image/launch-aws-snp.sh AMI_ID CONFIG.json [INSTANCE_TYPE] [SUBNET_ID]
#
# AMI_ID: an AMI registered from the image (boot mode uefi; see README.md "EC2"). EC2 launches with
# its own OVMF, so the expected measurement is `cscore worker measure --vmm ec2 --ovmf <AWS's published
# OVMF>`. EC2 does not let the launcher set HOST_DATA: the configuration document goes in the user
# data, and a policy for these workers cannot pin host_data (README.md says what binds it instead).
set -euo pipefail

ami=${1:?usage: launch-aws-snp.sh AMI_ID CONFIG.json [INSTANCE_TYPE] [SUBNET_ID]}
config=${2:?worker configuration document missing}
instance_type=${3:-m6a.large}
subnet=${4:-}

args=(ec2 run-instances --image-id "$ami" --instance-type "$instance_type" --count 1
      --cpu-options AmdSevSnp=enabled --user-data "fileb://$config"
      --metadata-options 'HttpTokens=required,HttpEndpoint=enabled'
      --tag-specifications 'ResourceType=instance,Tags=[{Key=Name,Value=cscore-worker}]')
if [ -n "$subnet" ]; then
    args+=(--subnet-id "$subnet")
fi
aws "${args[@]}" --query 'Instances[0].InstanceId' --output text
