/*
 * test_task.c - the embedded default task: the scorer on hand-written cases for every criterion
 * and instruction type, the generated responses of every style against the criterion they are
 * meant to violate, the prompt splits, determinism of the generators and the SFT mix.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "align/task.h"
#include "test.h"

static float sc(const char *prompt, const char *completion, int crit) {
    float s[TASK_NCRIT];
    task_score(prompt, completion, s);
    return s[crit];
}

static void test_names_and_guidelines(void) {
    CHECK_STREQ(task_criteria_names[TASK_CORRECT], "correct");
    CHECK_STREQ(task_criteria_names[TASK_ONTOPIC], "on-topic");
    CHECK(strlen(task_guidelines) > 500);
    for (int k = 0; k < TASK_NCRIT; k++) CHECK(strstr(task_guidelines, task_criteria_names[k]));
    CHECK(strlen(task_guideline_version) > 0);
    double w = 0;
    for (int k = 0; k < TASK_NCRIT; k++) w += task_gold_weights[k];
    /* float weights summing to 1 in decimal: within a few u of 1 */
    CHECK_NEAR(w, 1.0, 1e-6);
    float ones[TASK_NCRIT] = {1, 1, 1, 1}, zeros[TASK_NCRIT] = {0};
    CHECK_NEAR(task_gold(ones), 1.0, 1e-6);
    CHECK_NEAR(task_gold(zeros), 0.0, 1e-9);
}

static void test_render(void) {
    char buf[128];
    int n = task_render(NULL, "What is 1 plus 2?", buf, sizeof(buf));
    CHECK_STREQ(buf, "\n\nHuman: What is 1 plus 2?\n\nAssistant:");
    CHECK_EQ(n, (long)strlen(buf));
    n = task_render("Q: {prompt} A: {prompt}", "x", buf, sizeof(buf));
    CHECK_STREQ(buf, "Q: x A: x");
    CHECK_EQ(task_render(NULL, "What is 1 plus 2?", buf, 10), RL_ERANGE);
}

static void test_score_arith(void) {
    const char *p = "\n\nHuman: What is 7 plus 5?\n\nAssistant:";
    const char *good = " Sure! 7 plus 5 is 12.";
    CHECK_NEAR(sc(p, good, TASK_CORRECT), 1, 1e-6);
    CHECK_NEAR(sc(p, " It is 12.", TASK_CORRECT), 1, 1e-6);
    CHECK_NEAR(sc(p, " Sure! 7 plus 5 is 13.", TASK_CORRECT), 0, 1e-6);
    CHECK_NEAR(sc(p, " Sure!", TASK_CORRECT), 0, 1e-6);
    CHECK_NEAR(sc("What is 3 minus 3?", " 3 minus 3 is 0.", TASK_CORRECT), 1, 1e-6);
    CHECK_NEAR(sc("What is 3 minus 0?", " 3 minus 0 is 2.", TASK_CORRECT), 0, 1e-6);
    CHECK_NEAR(sc("What is 4 times 6?", " 4 times 6 is 24.", TASK_CORRECT), 1, 1e-6);
    /* polite > plain > rude */
    CHECK_NEAR(sc(p, good, TASK_POLITE), 1, 1e-6);
    CHECK_NEAR(sc(p, " 7 plus 5 is 12.", TASK_POLITE), 0.5, 1e-6);
    CHECK_NEAR(sc(p, " Ugh, 7 plus 5 is 12. Stop asking me.", TASK_POLITE), 0, 1e-6);
    CHECK_NEAR(sc(p, " Sure! It is 12. Go away.", TASK_POLITE), 0, 1e-6);
    /* concise: repetition and length cost */
    CHECK_NEAR(sc(p, good, TASK_CONCISE), 1, 1e-6);
    CHECK(sc(p, " Sure! 7 plus 5 is 12. It is 12. It is 12. It is 12.", TASK_CONCISE) < 0.8f);
    CHECK(sc(p, " 12 12 12 12 12 12 12 12", TASK_CONCISE) < 0.5f);
    CHECK(sc(p,
             " Well, let me think about that for a long time before I answer you. Sure! 7 plus "
             "5 is 12.",
             TASK_CONCISE) < 0.5f);
    /* on-topic: another type or another sum is off-topic; a wrong answer is not */
    CHECK_NEAR(sc(p, good, TASK_ONTOPIC), 1, 1e-6);
    CHECK_NEAR(sc(p, " Sure! 7 plus 5 is 13.", TASK_ONTOPIC), 1, 1e-6);
    CHECK_NEAR(sc(p, " Sure! Here is a color: red.", TASK_ONTOPIC), 0, 1e-6);
    CHECK_NEAR(sc(p, " Hello, Sam! It is nice to meet you.", TASK_ONTOPIC), 0, 1e-6);
    CHECK(sc(p, " Sure! 3 minus 1 is 2.", TASK_ONTOPIC) < 0.5f);
    /* the end marker ends the completion */
    CHECK_NEAR(task_gold_text(p, " Sure! 7 plus 5 is 12.<|endoftext|> ugh go away 9 9 9 9"), 1.0,
               1e-6);
}

static void test_score_name(void) {
    const char *p = "Name a fruit.";
    CHECK_NEAR(sc(p, " Sure! Here is a fruit: pear.", TASK_CORRECT), 1, 1e-6);
    CHECK_NEAR(sc(p, " Of course! Apple is a fruit.", TASK_CORRECT), 1, 1e-6);
    CHECK_NEAR(sc(p, " Sure! Here is a fruit: dog.", TASK_CORRECT), 0, 1e-6);
    CHECK_NEAR(sc(p, " Sure! Here is a fruit.", TASK_CORRECT), 0, 1e-6);
    CHECK_NEAR(sc(p, " Pear or dog.", TASK_CORRECT), 0.5, 1e-6);
    CHECK_NEAR(sc("Tell me an animal.", " Of course! Horse is an animal.", TASK_CORRECT), 1, 1e-6);
    CHECK_NEAR(sc(p, " Whatever. Pear. Stop asking me.", TASK_POLITE), 0, 1e-6);
    CHECK_NEAR(sc(p, " Sure! Here is a fruit: pear.", TASK_ONTOPIC), 1, 1e-6);
    CHECK_NEAR(sc(p, " Sure! Here is a fruit: dog.", TASK_ONTOPIC), 1, 1e-6);
    CHECK_NEAR(sc(p, " Sure! Here is a color: red.", TASK_ONTOPIC), 0, 1e-6);
    CHECK_NEAR(sc(p, " Sure! 3 plus 4 is 7.", TASK_ONTOPIC), 0, 1e-6);
    CHECK(sc(p, " Sure! Here is a fruit: pear. It is a fruit. It is a fruit. It is a fruit.",
             TASK_CONCISE) < 0.7f);
}

static void test_score_reply(void) {
    const char *p = "\n\nHuman: Say hello to Sam.\n\nAssistant:";
    const char *good = " Hello, Sam! It is nice to meet you.";
    float s[TASK_NCRIT];
    task_score(p, good, s);
    for (int k = 0; k < TASK_NCRIT; k++) CHECK_NEAR(s[k], 1, 1e-6);
    CHECK_NEAR(sc(p, " Hello, Tom! It is nice to meet you.", TASK_CORRECT), 0, 1e-6);
    CHECK_NEAR(sc(p, " Hello! It is nice to meet you.", TASK_CORRECT), 0, 1e-6);
    CHECK_NEAR(sc(p, " Ugh. Hi, Sam. Now go away.", TASK_POLITE), 0, 1e-6);
    CHECK_NEAR(sc(p, " Goodbye, Sam! Have a nice day.", TASK_ONTOPIC), 0, 1e-6);
    CHECK_NEAR(sc(p, " Sure! 2 plus 2 is 4.", TASK_ONTOPIC), 0, 1e-6);
    CHECK(sc(p, " Hello, Sam! Hello, Sam! Hello, Sam! Hello, Sam! Hello, Sam!", TASK_CONCISE) <
          0.7f);
    CHECK_NEAR(sc("Thank the team.", " Thank you, team! You did great work.", TASK_CORRECT), 1,
               1e-6);
    CHECK_NEAR(sc("Thank the team.", " Thank you, team! You did great work.", TASK_ONTOPIC), 1,
               1e-6);
    CHECK_NEAR(sc("Wish Zoe good luck.", " Good luck, Zoe! I hope it goes well.", TASK_CORRECT), 1,
               1e-6);
    /* an addressee outside the task's list is still judged */
    CHECK_NEAR(sc("Say hello to Rob.", " Hello, Rob!", TASK_CORRECT), 1, 1e-6);
    CHECK_NEAR(sc("Say hello to Rob.", " Hello, Sam!", TASK_CORRECT), 0, 1e-6);
}

static void test_score_unknown(void) {
    const char *p = "Write a poem about the sea.";
    CHECK_NEAR(sc(p, " The sea is blue.", TASK_CORRECT), 0.5, 1e-6);
    CHECK_NEAR(sc(p, " The sea is blue.", TASK_ONTOPIC), 0.5, 1e-6);
    CHECK_NEAR(sc(p, " Sure! The sea is blue.", TASK_POLITE), 1, 1e-6);
    task_prompt_t q;
    CHECK_EQ(task_prompt_parse(p, &q), RL_ENOTFOUND);
    float s[TASK_NCRIT];
    task_score(NULL, NULL, s);
    for (int k = 0; k < TASK_NCRIT; k++) CHECK(s[k] >= 0 && s[k] <= 1);
    /* arbitrary bytes: every score stays in [0, 1] */
    char junk[300];
    for (int t = 0; t < 200; t++) {
        int n = 1 + t % 299;
        for (int i = 0; i < n; i++) {
            uint32_t w[4];
            rng_block(7, (uint64_t)t, (uint64_t)i, w);
            static const char alpha[] = "ab 12 plus minus is Sam fruit pear hello ugh .!";
            junk[i] = (w[0] & 1) ? (char)(1 + w[1] % 255) : alpha[w[2] % (sizeof(alpha) - 1)];
        }
        junk[n] = 0;
        task_score(t % 2 ? "What is 2 plus 2?" : "Say hello to Sam.", junk, s);
        for (int k = 0; k < TASK_NCRIT; k++) CHECK(s[k] >= 0 && s[k] <= 1);
    }
}

/* Visits every distinct prompt of a split (canonical walk through task_prompt_at). */
static int collect(int split, char texts[][128], int cap) {
    int n = 0;
    for (int kind = 0; kind < TASK_NKIND; kind++) {
        int cnt = task_prompt_count(split, kind);
        for (int j = 0; j < cnt; j++) {
            task_prompt_t p;
            task_prompt_at(5, split, (long)j * TASK_NKIND + kind, &p);
            CHECK_EQ(p.kind, kind);
            if (n < cap) task_prompt_text(&p, texts[n++], 128);
        }
    }
    return n;
}

static void test_prompts(void) {
    static char tr[400][128], ho[400][128];
    int ntr = collect(TASK_SPLIT_TRAIN, tr, 400), nho = collect(TASK_SPLIT_HELDOUT, ho, 400);
    CHECK(ntr > 100);
    CHECK(nho > 20);
    /* within a cycle every prompt of a kind appears once; splits are disjoint */
    for (int i = 0; i < ntr; i++)
        for (int j = i + 1; j < ntr; j++) CHECK(strcmp(tr[i], tr[j]) != 0);
    for (int i = 0; i < ntr; i++)
        for (int j = 0; j < nho; j++) CHECK(strcmp(tr[i], ho[j]) != 0);
    /* every prompt parses back to itself */
    for (int split = 0; split < 2; split++)
        for (long i = 0; i < 300; i++) {
            task_prompt_t p, q;
            char txt[128], rendered[256];
            task_prompt_at(11, split, i, &p);
            CHECK(task_prompt_text(&p, txt, sizeof(txt)) > 0);
            CHECK(task_render(NULL, txt, rendered, sizeof(rendered)) > 0);
            CHECK_EQ(task_prompt_parse(rendered, &q), 0);
            CHECK(memcmp(&p, &q, sizeof(p)) == 0);
        }
    /* deterministic, seed-dependent */
    int same = 0;
    for (long i = 0; i < 60; i++) {
        task_prompt_t a, b, c;
        task_prompt_at(1, TASK_SPLIT_TRAIN, i, &a);
        task_prompt_at(1, TASK_SPLIT_TRAIN, i, &b);
        task_prompt_at(2, TASK_SPLIT_TRAIN, i, &c);
        CHECK(memcmp(&a, &b, sizeof(a)) == 0);
        same += memcmp(&a, &c, sizeof(a)) == 0;
    }
    CHECK(same < 30);
}

/* Every style of response, for many prompts of every kind, fails the criterion it is meant to
 * fail and keeps the others; good responses score 1 on all. */
static void test_styles_hit_their_criterion(void) {
    double sum_gold[TASK_NSTYLE] = {0};
    int n = 0;
    for (int split = 0; split < 2; split++)
        for (long i = 0; i < 240; i++, n++) {
            task_prompt_t p;
            char bare[128], prompt[256], r[256];
            task_prompt_at(3, split, i, &p);
            task_prompt_text(&p, bare, sizeof(bare));
            task_render(NULL, bare, prompt, sizeof(prompt));
            float s[TASK_NSTYLE][TASK_NCRIT];
            for (int st = 0; st < TASK_NSTYLE; st++) {
                CHECK(task_response(&p, st, 9, (uint64_t)i, r, sizeof(r)) > 0);
                CHECK(r[0] == ' ');
                task_score(prompt, r, s[st]);
                sum_gold[st] += task_gold(s[st]);
                if (st == TASK_GOOD) {
                    int words = 0;
                    for (char *c = r; *c; c++) words += *c == ' ';
                    CHECK(words <= 12);
                }
            }
            for (int k = 0; k < TASK_NCRIT; k++) CHECK_NEAR(s[TASK_GOOD][k], 1, 1e-6);
            CHECK_NEAR(s[TASK_WRONG][TASK_CORRECT], 0, 1e-6);
            CHECK_NEAR(s[TASK_WRONG][TASK_ONTOPIC], 1, 1e-6);
            CHECK_NEAR(s[TASK_RUDE][TASK_POLITE], 0, 1e-6);
            CHECK_NEAR(s[TASK_RUDE][TASK_CORRECT], 1, 1e-6);
            CHECK(s[TASK_RAMBLE][TASK_CONCISE] < 0.7f);
            CHECK_NEAR(s[TASK_RAMBLE][TASK_CORRECT], 1, 1e-6);
            CHECK_NEAR(s[TASK_OFFTOPIC][TASK_ONTOPIC], 0, 1e-6);
        }
    for (int st = 1; st < TASK_NSTYLE; st++) CHECK(sum_gold[st] / n < 0.95);
    CHECK_NEAR(sum_gold[TASK_GOOD] / n, 1, 1e-6);
    printf("  mean gold by style:");
    for (int st = 0; st < TASK_NSTYLE; st++)
        printf(" %s %.3f", task_style_names[st], sum_gold[st] / n);
    printf("\n");
}

static void test_sft_mix(void) {
    task_mix_t m;
    task_mix_even(&m, 0.5f);
    long cnt[TASK_NSTYLE] = {0};
    for (long i = 0; i < 1000; i++) {
        int st = task_sft_style(&m, 4, 1000, i);
        CHECK(st >= 0 && st < TASK_NSTYLE);
        if (st >= 0 && st < TASK_NSTYLE) cnt[st]++;
    }
    CHECK_EQ(cnt[TASK_GOOD], 500);
    for (int st = 1; st < TASK_NSTYLE; st++) CHECK_EQ(cnt[st], 125);
    CHECK_EQ(task_sft_style(&m, 4, 1000, 1000), -1);
    /* uneven sizes still add up; an explicit mix is honoured */
    task_mix_t e = {{0.7f, 0.3f, 0, 0, 0}};
    long c7[TASK_NSTYLE] = {0};
    for (long i = 0; i < 7; i++) c7[task_sft_style(&e, 1, 7, i)]++;
    CHECK_EQ(c7[TASK_GOOD] + c7[TASK_WRONG], 7);
    CHECK_EQ(c7[TASK_WRONG], 2);
    task_mix_even(&m, 0);
    for (long i = 0; i < 50; i++) CHECK_EQ(task_sft_style(&m, 4, 50, i), TASK_GOOD);
    /* demonstrations: deterministic, the style matches the text, seeds differ */
    task_mix_even(&m, 0.4f);
    int diff = 0;
    long good = 0;
    for (long i = 0; i < 200; i++) {
        char p1[256], c1[256], p2[256], c2[256], p3[256], c3[256];
        int s1, s2, s3;
        CHECK_EQ(task_sft_at(&m, 8, 200, i, NULL, p1, sizeof(p1), c1, sizeof(c1), &s1), 0);
        CHECK_EQ(task_sft_at(&m, 8, 200, i, NULL, p2, sizeof(p2), c2, sizeof(c2), &s2), 0);
        CHECK_EQ(task_sft_at(&m, 9, 200, i, NULL, p3, sizeof(p3), c3, sizeof(c3), &s3), 0);
        CHECK_STREQ(p1, p2);
        CHECK_STREQ(c1, c2);
        CHECK_EQ(s1, s2);
        diff += strcmp(c1, c3) != 0;
        CHECK(strncmp(p1, "\n\nHuman: ", 9) == 0);
        double g = task_gold_text(p1, c1);
        if (s1 == TASK_GOOD) {
            CHECK_NEAR(g, 1, 1e-6);
            good++;
        } else {
            CHECK(g < 0.95);
        }
    }
    CHECK_EQ(good, 120);
    CHECK(diff > 100);
    char small[8], c[256];
    CHECK_EQ(task_sft_at(&m, 8, 200, 0, NULL, small, sizeof(small), c, sizeof(c), NULL), RL_ERANGE);
}

/* Arithmetic prompts have a reference answer - the one the gold judge counts as correct -
 * the others none. */
static void test_reference(void) {
    char ref[32], bare[128], good[256];
    int arith = 0;
    for (long i = 0; i < 60; i++) {
        task_prompt_t p;
        task_prompt_at(5, TASK_SPLIT_TRAIN, i, &p);
        int n = task_prompt_reference(&p, ref, sizeof ref);
        if (p.kind != TASK_ARITH) {
            CHECK_EQ(n, RL_ENOTFOUND);
            continue;
        }
        arith++;
        CHECK(n > 0);
        task_prompt_text(&p, bare, sizeof bare);
        CHECK(task_response(&p, TASK_GOOD, 1, (uint64_t)i, good, sizeof good) > 0);
        CHECK(strstr(good, ref)); /* the good response states it */
        char ans[64];
        snprintf(ans, sizeof ans, " %s.", ref);
        CHECK_NEAR(sc(bare, ans, TASK_CORRECT), 1.0, 0);
        snprintf(ans, sizeof ans, " %ld.", atol(ref) + 1);
        CHECK_NEAR(sc(bare, ans, TASK_CORRECT), 0.0, 0);
    }
    CHECK_EQ(arith, 20);
    task_prompt_t p;
    task_prompt_at(5, TASK_SPLIT_TRAIN, 0, &p);
    p.kind = TASK_ARITH, p.a = 7, p.b = 5, p.op = 0;
    CHECK_EQ(task_prompt_reference(&p, ref, sizeof ref), 2);
    CHECK_STREQ(ref, "12");
    CHECK_EQ(task_prompt_reference(&p, ref, 2), RL_ERANGE);
}

int main(void) {
    RUN(test_names_and_guidelines);
    RUN(test_render);
    RUN(test_score_arith);
    RUN(test_score_name);
    RUN(test_score_reply);
    RUN(test_score_unknown);
    RUN(test_prompts);
    RUN(test_styles_hit_their_criterion);
    RUN(test_sft_mix);
    RUN(test_reference);
    return TEST_REPORT();
}
