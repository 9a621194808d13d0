#ifndef RLHF_PPO_H
#define RLHF_PPO_H
#endif
