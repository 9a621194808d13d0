#!/bin/bash
# placeholder: being written
echo "test_sft_cli.sh: not written yet" >&2
exit 1
