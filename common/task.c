/* task.c - placeholder: being written */
#include "task.h"
