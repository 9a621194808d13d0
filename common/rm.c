/* rm.c - placeholder: being written */
#include "rm.h"
