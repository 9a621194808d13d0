#ifndef RLHF_ANNOT_H
#define RLHF_ANNOT_H
#endif
