/* annot.c - placeholder: being written */
#include "annot.h"
