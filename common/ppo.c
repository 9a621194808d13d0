/* ppo.c - placeholder: being written */
#include "ppo.h"
