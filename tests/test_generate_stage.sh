#!/bin/bash
# placeholder: being written
echo "test_generate_stage.sh: not written yet" >&2
exit 1
