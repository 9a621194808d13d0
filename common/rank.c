/* rank.c - placeholder: being written */
#include "rank.h"
