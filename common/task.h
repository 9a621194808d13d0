/*
 * task.h - the embedded default task: instruction prompts of a few types, the written
 * alignment criteria, a scorer of each criterion (the gold judge, and the ground truth the
 * simulated annotators perceive with their own weights and noise), and a generator of SFT
 * demonstrations that mixes good and bad responses.
 */
#ifndef RLHF_TASK_H
#define RLHF_TASK_H

#include <stdint.h>

enum { TASK_CORRECT, TASK_POLITE, TASK_CONCISE, TASK_ONTOPIC, TASK_NCRIT };

/* "correct", "polite", "concise", "on-topic" */
extern const char *const task_criteria_names[TASK_NCRIT];

/* The written guidelines annotators follow (what each criterion means); and its version. */
extern const char *const task_guidelines;
extern const char *const task_guideline_version;

/*
 * Scores completion against prompt on each criterion, each in [0, 1] (1 = fully meets it).
 * Works on any text (a criterion that cannot be judged for a prompt it does not recognise,
 * such as correctness of a free request, scores 0.5). Deterministic.
 */
void task_score(const char *prompt, const char *completion, float scores[TASK_NCRIT]);

/* The gold judge: the criteria combined with the fixed gold weights, in [0, 1]. */
double task_gold(const float scores[TASK_NCRIT]);

#endif
