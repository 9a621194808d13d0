#ifndef RLHF_WSYNC_H
#define RLHF_WSYNC_H
#endif
