#!/bin/bash
# placeholder: being written
echo "test_wsync_fault.sh: not written yet" >&2
exit 1
