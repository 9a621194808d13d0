#ifndef RLHF_RM_H
#define RLHF_RM_H
#endif
