/* worker_learner.c - placeholder: being written */
#include "worker.h"
