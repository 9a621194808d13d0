/* wsync.c - placeholder: being written */
#include "wsync.h"
