/*
 * test_annot.c - the annotation store: ranking parsing and validation (errors name file and
 * line), JSONL and CSV readers, duplicate refusal, assignment with overlap, simulated annotators
 * (zero noise reproduces the weighted criteria order; agreement falls with noise as the normal
 * model predicts) and aggregation on hand-computed examples.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "align/annot.h"
#include "base/err.h"
#include "base/rng.h"
#include "test.h"

static char *tmp_path(const char *name) {
    static char buf[8][512];
    static int i;
    char *p = buf[i++ % 8];
    snprintf(p, 512, "%s/%s", test_tmpdir(), name);
    return p;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

/* Two prompts: p1 with 4 completions, p2 with 3. */
static const char comp_text[] =
    "{\"prompt_id\":\"p1\",\"prompt\":\"Say hi\",\"completions\":[{\"id\":\"a\",\"text\":\"hi\"},"
    "{\"id\":\"b\",\"text\":\"hello\"},{\"id\":\"c\",\"text\":\"yo\"},{\"id\":\"d\",\"text\":"
    "\"no\"}]}\n"
    "\n"
    "{\"prompt_id\":\"p2\",\"prompt\":\"Add 2+2\",\"completions\":[{\"id\":\"x\",\"text\":\"4\","
    "\"tokens\":[1,2],\"logprob\":-1.5},{\"id\":\"y\",\"text\":\"5\"},{\"id\":\"z\",\"text\":"
    "\"four\"}]}\n";

static void load_comp(annot_comp_t *c) {
    const char *path = tmp_path("comp.jsonl");
    write_file(path, comp_text);
    CHECK_OK(annot_comp_load(c, path));
}

static int msg_has(const char *needle) {
    if (strstr(rl_errmsg(), needle)) return 1;
    fprintf(stderr, "  message '%s' lacks '%s'\n", rl_errmsg(), needle);
    return 0;
}

static void test_completions(void) {
    annot_comp_t c;
    load_comp(&c);
    CHECK_EQ(c.n, 2);
    CHECK_EQ(c.v[0].k, 4);
    CHECK_EQ(c.v[1].k, 3);
    CHECK_STREQ(c.v[1].text[2], "four");
    CHECK_STREQ(c.v[1].cid[0], "x");
    CHECK_EQ(annot_comp_find(&c, "p2"), 1);
    CHECK_EQ(annot_comp_find(&c, "p1"), 0);
    CHECK_EQ(annot_comp_find(&c, "p3"), -1);
    annot_comp_free(&c);
    const char *bad = tmp_path("comp_bad.jsonl");
    write_file(bad,
               "{\"prompt_id\":\"p1\",\"prompt\":\"x\",\"completions\":[{\"id\":\"a\","
               "\"text\":\"t\"}]}\n{\"prompt_id\":\"p2\",\"prompt\":\"x\",\"completions\":[]}\n");
    CHECK_ERR(annot_comp_load(&c, bad), RL_EFORMAT);
    CHECK(msg_has("comp_bad.jsonl:2: completions"));
    write_file(bad, "{\"prompt_id\":\"p1\",\"prompt\":\"x\",\"completions\":[{\"id\":\"a\","
                    "\"text\":\"t\"}]}\n{\"prompt_id\":\"p1\",\"prompt\":\"y\",\"completions\":"
                    "[{\"id\":\"a\",\"text\":\"t\"}]}\n");
    CHECK_ERR(annot_comp_load(&c, bad), RL_EFORMAT);
    CHECK(msg_has("'p1' appears twice"));
    CHECK_EQ(c.n, 0);
}

static void test_ranking_text(void) {
    int lv[4];
    CHECK_OK(annot_ranking_parse("2>0=3>1", 4, "f:1", lv));
    CHECK_EQ(lv[0], 1);
    CHECK_EQ(lv[1], 2);
    CHECK_EQ(lv[2], 0);
    CHECK_EQ(lv[3], 1);
    CHECK_OK(annot_ranking_parse(" 0 = 1 = 2 = 3 ", 4, "f:1", lv));
    for (int i = 0; i < 4; i++) CHECK_EQ(lv[i], 0);
    CHECK_ERR(annot_ranking_parse("0>0>1>2", 4, "f.csv:7", lv), RL_EFORMAT);
    CHECK(msg_has("f.csv:7: ranking: completion 0 appears twice"));
    CHECK_ERR(annot_ranking_parse("0>1>2>4", 4, "f.csv:7", lv), RL_EFORMAT);
    CHECK(msg_has("f.csv:7: ranking: completion 4 is out of range"));
    CHECK_ERR(annot_ranking_parse("0>1>2", 4, "f.csv:7", lv), RL_EFORMAT);
    CHECK(msg_has("completion 3 is not ranked"));
    CHECK_ERR(annot_ranking_parse("0>>1>2>3", 4, "f.csv:7", lv), RL_EFORMAT);
    CHECK_ERR(annot_ranking_parse("0,1,2,3", 4, "f.csv:7", lv), RL_EFORMAT);
    CHECK_ERR(annot_ranking_parse("", 4, "f.csv:7", lv), RL_EFORMAT);
    CHECK_ERR(annot_ranking_parse("-1>0>1>2", 4, "f.csv:7", lv), RL_EFORMAT);
}

static void test_ranking_json(void) {
    int lv[4];
    json_t *j = json_loads("[[2],[0,3],[1]]", 0, NULL);
    CHECK_OK(annot_ranking_from_json(j, 4, "f:1", lv));
    CHECK(lv[2] == 0 && lv[0] == 1 && lv[3] == 1 && lv[1] == 2);
    json_t *back = annot_ranking_to_json(lv, 4);
    CHECK(json_equal(back, j));
    json_decref(back);
    json_decref(j);
    j = json_loads("[2,[0,3],1]", 0, NULL); /* bare indices are groups of one */
    CHECK_OK(annot_ranking_from_json(j, 4, "f:1", lv));
    CHECK(lv[2] == 0 && lv[0] == 1 && lv[3] == 1 && lv[1] == 2);
    json_decref(j);
    static const char *const bad[] = {"[[2],[0,3],[1,2]]",  "[[2],[0,3],[9]]",     "[[2],[0,3]]",
                                      "[[2],[],[0,3],[1]]", "[[2],[0,\"3\"],[1]]", "{}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        j = json_loads(bad[i], 0, NULL);
        CHECK_ERR(annot_ranking_from_json(j, 4, "a.jsonl:5", lv), RL_EFORMAT);
        CHECK(msg_has("a.jsonl:5: ranking"));
        json_decref(j);
    }
}

static void test_time(void) {
    CHECK(annot_time_valid("2026-01-02T03:04:05Z"));
    CHECK(annot_time_valid("2026-01-02T03:04:05.123Z"));
    CHECK(!annot_time_valid("2026-01-02 03:04:05Z"));
    CHECK(!annot_time_valid("2026-01-02T03:04:05"));
    CHECK(!annot_time_valid("2026-01-02T03:04:05+01:00"));
    char now[32];
    annot_time_now(now, sizeof now);
    CHECK(annot_time_valid(now));
}

static void test_store_jsonl(void) {
    annot_comp_t c;
    load_comp(&c);
    annot_store_t s;
    annot_store_init(&s, &c);
    const char *path = tmp_path("ann.jsonl");
    write_file(path, "{\"prompt_id\":\"p1\",\"annotator\":\"ann1\",\"ranking\":[[2],[0,3],[1]],"
                     "\"skip\":false,\"confidence\":0.8,\"note\":\"close call\",\"time\":"
                     "\"2026-01-02T03:04:05Z\",\"guideline\":\"v1\",\"shown\":[3,1,0,2]}\n"
                     "{\"prompt_id\":\"p2\",\"annotator\":\"ann1\",\"skip\":true}\n"
                     "{\"prompt_id\":\"p2\",\"annotator\":\"ann2\",\"ranking\":[0,1,2]}\n");
    CHECK_OK(annot_store_read_jsonl(&s, path, "2030-01-01T00:00:00Z", "vX"));
    CHECK_EQ(s.n, 3);
    if (s.n == 3) {
        annot_rec_t *r = &s.v[0];
        CHECK_EQ(r->prompt, 0);
        CHECK_EQ(r->level[2], 0);
        CHECK_EQ(r->level[1], 2);
        CHECK_EQ(r->shown[0], 3);
        CHECK_NEAR(r->confidence, 0.8, 1e-12);
        CHECK_STREQ(r->note, "close call");
        CHECK_STREQ(r->guideline, "v1");
        CHECK(s.v[1].skip && !s.v[1].level);
        CHECK(isnan(s.v[2].confidence) && !s.v[2].note && !s.v[2].shown);
        /* absent time and guideline are filled in */
        CHECK_STREQ(s.v[2].time, "2030-01-01T00:00:00Z");
        CHECK_STREQ(s.v[2].guideline, "vX");
        CHECK_EQ(annot_store_find(&s, 1, "ann2"), 2);
        CHECK_EQ(annot_store_find(&s, 0, "ann2"), -1);
    }
    /* write and read back: the same records */
    const char *out = tmp_path("ann_out.jsonl");
    CHECK_OK(annot_store_write(&s, out));
    annot_store_t s2;
    annot_store_init(&s2, &c);
    CHECK_OK(annot_store_read_jsonl(&s2, out, "1999-01-01T00:00:00Z", "other"));
    CHECK_EQ(s2.n, s.n);
    for (int i = 0; i < s.n && i < s2.n; i++) {
        json_t *a = annot_rec_to_json(&c, &s.v[i]), *b = annot_rec_to_json(&c, &s2.v[i]);
        CHECK(json_equal(a, b));
        json_decref(a);
        json_decref(b);
    }
    /* merging the same file again: the duplicate names both places */
    CHECK_ERR(annot_store_read_jsonl(&s2, path, "2030-01-01T00:00:00Z", "v1"), RL_EFORMAT);
    CHECK(msg_has("ann.jsonl:1: prompt 'p1' already has a record by annotator 'ann1'"));
    CHECK(msg_has("ann_out.jsonl:1"));
    annot_store_free(&s2);
    annot_store_free(&s);

    /* malformed records: each names file:line */
    static const struct {
        const char *line, *msg;
    } bad[] = {
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[[0],[0],[1,2,3]]}",
         "appears twice"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[[0],[4],[1,2,3]]}",
         "out of range"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[[0],[1,2]]}", "not ranked"},
        {"{\"prompt_id\":\"p9\",\"annotator\":\"a\",\"ranking\":[0,1,2,3]}",
         "not in the completions"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"\",\"ranking\":[0,1,2,3]}", "annotator: empty"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\"}", "ranking: missing"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[0,1,2,3],\"skip\":true}",
         "must be empty"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[0,1,2,3],\"confidence\":2}",
         "confidence"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[0,1,2,3],\"time\":\"yesterday\"}",
         "not ISO-8601"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[0,1,2,3],\"shown\":[0,1,1,2]}",
         "shown"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[0,1,2,3],\"rank\":1}",
         "unknown field 'rank'"},
        {"{\"prompt_id\":\"p1\",\"annotator\":\"a\",\"ranking\":[0,1,2,3]", "bad.jsonl:3:"},
    };
    const char *bp = tmp_path("bad.jsonl");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[1024];
        snprintf(text, sizeof text,
                 "{\"prompt_id\":\"p2\",\"annotator\":\"z\",\"ranking\":[0,1,2]}\n\n%s\n",
                 bad[i].line);
        write_file(bp, text);
        annot_store_init(&s, &c);
        CHECK_ERR(annot_store_read_jsonl(&s, bp, "2030-01-01T00:00:00Z", "v1"), RL_EFORMAT);
        CHECK(msg_has("bad.jsonl:3"));
        CHECK(msg_has(bad[i].msg));
        annot_store_free(&s);
    }
    annot_comp_free(&c);
}

static void test_store_csv(void) {
    annot_comp_t c;
    load_comp(&c);
    annot_store_t s;
    annot_store_init(&s, &c);
    const char *path = tmp_path("ann.csv");
    write_file(path, "prompt_id,annotator,ranking,skip,confidence,note,time,guideline,shown\r\n"
                     "p1,ann1,2>0=3>1,false,0.5,\"a note, with a comma\",2026-01-02T03:04:05Z,v1,"
                     "3 1 0 2\r\n"
                     "p2,ann1,,true,,,,,\n"
                     "p2,ann2,0>1>2,,,\"two\nlines \"\"quoted\"\"\",,,\n"
                     "\n");
    CHECK_OK(annot_store_read_csv(&s, path, "2030-01-01T00:00:00Z", "v1"));
    CHECK_EQ(s.n, 3);
    if (s.n == 3) {
        CHECK(s.v[0].level[2] == 0 && s.v[0].level[0] == 1 && s.v[0].level[3] == 1 &&
              s.v[0].level[1] == 2);
        CHECK_STREQ(s.v[0].note, "a note, with a comma");
        CHECK_NEAR(s.v[0].confidence, 0.5, 1e-12);
        CHECK_EQ(s.v[0].shown[1], 1);
        CHECK_EQ(s.v[0].shown[3], 2);
        CHECK(s.v[1].skip);
        CHECK_STREQ(s.v[2].note, "two\nlines \"quoted\"");
        CHECK_STREQ(s.v[2].time, "2030-01-01T00:00:00Z");
    }
    annot_store_free(&s);

    /* errors name the line the row starts on (after a cell spanning two lines) */
    static const struct {
        const char *row, *msg;
    } bad[] = {
        {"p1,b,0>0>1>2,,", "bad.csv:4: ranking: completion 0 appears twice"},
        {"p1,b,0>1>2>7,,", "bad.csv:4: ranking: completion 7 is out of range"},
        {"p1,b,0>1>2>3,", "bad.csv:4: 4 cells, the header has 5"},
        {"p1,b,0>1>2>3,maybe,", "bad.csv:4: skip"},
        {"p1,b,0>1>2>3,,\"true", "bad.csv:4: unterminated"},
        {"p1,a,0>1>2>3,,", "prompt 'p1' already has a record by annotator 'a'"},
    };
    const char *bp = tmp_path("bad.csv");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[1024];
        snprintf(text, sizeof text,
                 "prompt_id,annotator,ranking,skip,note\n"
                 "p1,a,3>2>1>0,,\"line\nbreak\"\n%s\n",
                 bad[i].row);
        write_file(bp, text);
        annot_store_init(&s, &c);
        CHECK_ERR(annot_store_read_csv(&s, bp, "2030-01-01T00:00:00Z", "v1"), RL_EFORMAT);
        CHECK(msg_has("bad.csv:4: "));
        CHECK(msg_has(bad[i].msg));
        if (i == 5) CHECK(msg_has("bad.csv:2)")); /* the duplicate names the first record */
        annot_store_free(&s);
    }
    write_file(bp, "prompt_id,annotator,rank\np1,a,0>1>2>3\n");
    annot_store_init(&s, &c);
    CHECK_ERR(annot_store_read_csv(&s, bp, "2030-01-01T00:00:00Z", "v1"), RL_EFORMAT);
    CHECK(msg_has("bad.csv:1: unknown column 'rank'"));
    annot_store_free(&s);
    write_file(bp, "prompt_id,annotator\np1,a\n");
    annot_store_init(&s, &c);
    CHECK_ERR(annot_store_read_csv(&s, bp, "2030-01-01T00:00:00Z", "v1"), RL_EFORMAT);
    CHECK(msg_has("no 'ranking' column"));
    annot_store_free(&s);
    annot_comp_free(&c);
}

static void test_assign(void) {
    static const int prompts[] = {0, 1, 7, 50, 123};
    uint64_t keys[123];
    int out[123 * 9];
    for (int p = 0; p < 123; p++) {
        char id[16];
        snprintf(id, sizeof id, "q%d", p);
        keys[p] = annot_prompt_key(id);
    }
    for (int n = 1; n <= 9; n++) {
        for (int R = 1; R <= n; R++) {
            for (size_t pi = 0; pi < sizeof prompts / sizeof *prompts; pi++) {
                int P = prompts[pi], load[9] = {0};
                CHECK_OK(annot_assign(P, keys, n, R, 42, out));
                int ok_rows = 1;
                for (int p = 0; p < P; p++) {
                    for (int j = 0; j < R; j++) {
                        int a = out[p * R + j];
                        if (a < 0 || a >= n || (j > 0 && a <= out[p * R + j - 1]))
                            ok_rows = 0;
                        else
                            load[a]++;
                    }
                }
                CHECK(ok_rows); /* R distinct annotators, in range, ascending */
                int lo = P * R, hi = 0, sum = 0;
                for (int a = 0; a < n; a++) {
                    lo = load[a] < lo ? load[a] : lo;
                    hi = load[a] > hi ? load[a] : hi;
                    sum += load[a];
                }
                CHECK_EQ(sum, P * R);
                CHECK(hi - lo <= 1); /* balanced */
            }
        }
    }
    CHECK_ERR(annot_assign(5, keys, 3, 4, 1, out), RL_EINVAL);
    CHECK_ERR(annot_assign(5, keys, 3, 0, 1, out), RL_EINVAL);
    /* deterministic, seed-dependent, and the groups vary: every pair of 6 annotators meets */
    int again[123 * 2];
    CHECK_OK(annot_assign(123, keys, 6, 2, 7, out));
    CHECK_OK(annot_assign(123, keys, 6, 2, 7, again));
    CHECK(memcmp(out, again, sizeof(int) * 123 * 2) == 0);
    int met[6][6] = {{0}};
    for (int p = 0; p < 123; p++) met[out[2 * p]][out[2 * p + 1]] = 1;
    int pairs = 0;
    for (int a = 0; a < 6; a++)
        for (int b = a + 1; b < 6; b++) pairs += met[a][b];
    CHECK_EQ(pairs, 15);
    CHECK_OK(annot_assign(123, keys, 6, 2, 8, again));
    CHECK(memcmp(out, again, sizeof(int) * 123 * 2) != 0);
}

/* Expected order by utility w . scores, computed independently: level = number of strictly
 * better items' distinct utilities. */
static void expected_levels(const double *w, const float (*sc)[TASK_NCRIT], int k, int *lv) {
    double u[16];
    for (int i = 0; i < k; i++) {
        u[i] = 0;
        for (int c = 0; c < TASK_NCRIT; c++) u[i] += w[c] * sc[i][c];
    }
    for (int i = 0; i < k; i++) {
        int better = 0;
        for (int j = 0; j < k; j++) {
            int dup = 0;
            for (int m = 0; m < j; m++) dup |= fabs(u[m] - u[j]) <= 1e-9;
            if (!dup && u[j] > u[i] + 1e-9) better++;
        }
        lv[i] = better;
    }
}

static void test_sim_zero_noise(void) {
    /* columns: correct, polite, concise, on-topic */
    static const float sc[5][TASK_NCRIT] = {{1.0f, 0.0f, 0.5f, 1.0f},
                                            {0.0f, 1.0f, 1.0f, 1.0f},
                                            {0.5f, 0.5f, 0.0f, 0.0f},
                                            {1.0f, 1.0f, 0.0f, 0.5f},
                                            {0.2f, 0.8f, 0.9f, 0.1f}};
    static const double ws[][TASK_NCRIT] = {{1, 0, 0, 0},         {0, 1, 0, 0},
                                            {0, 0, 1, 0},         {0, 0, 0, 1},
                                            {0.4, 0.2, 0.2, 0.2}, {0.1, 0.6, 0.2, 0.1}};
    for (size_t t = 0; t < sizeof ws / sizeof *ws; t++) {
        annot_sim_t a = {.noise = 0};
        snprintf(a.id, sizeof a.id, "w%zu", t);
        memcpy(a.w, ws[t], sizeof a.w);
        int lv[5], want[5], shown[5];
        for (int seed = 1; seed <= 3; seed++) {
            annot_sim_rank(&a, (int)t, (uint64_t)seed, annot_prompt_key("p"), sc, 5, lv, shown);
            expected_levels(a.w, sc, 5, want);
            for (int i = 0; i < 5; i++) CHECK_EQ(lv[i], want[i]);
            int seen[5] = {0};
            for (int i = 0; i < 5; i++) seen[shown[i]]++;
            for (int i = 0; i < 5; i++) CHECK_EQ(seen[i], 1);
        }
    }
    /* correctness alone: items 0 and 3 tie at the top, then 2, 4, 1 */
    annot_sim_t a = {.w = {1, 0, 0, 0}, .noise = 0};
    int lv[5];
    annot_sim_rank(&a, 0, 1, 5, sc, 5, lv, NULL);
    CHECK(lv[0] == 0 && lv[3] == 0 && lv[2] == 1 && lv[4] == 2 && lv[1] == 3);
    /* the shown order is a seeded shuffle: it varies over prompts */
    int first[5], other[5], differ = 0;
    annot_sim_rank(&a, 0, 1, 100, sc, 5, lv, first);
    for (uint64_t key = 101; key < 110; key++) {
        annot_sim_rank(&a, 0, 1, key, sc, 5, lv, other);
        differ |= memcmp(first, other, sizeof first) != 0;
    }
    CHECK(differ);
    /* the default panel: distinct weightings, normalised, noise spread around the mean */
    annot_sim_t panel[5];
    annot_sim_panel(5, 0.2, panel);
    CHECK_STREQ(panel[0].id, "sim01");
    double nsum = 0;
    for (int i = 0; i < 5; i++) {
        double s = 0;
        for (int c = 0; c < TASK_NCRIT; c++) s += panel[i].w[c];
        CHECK_NEAR(s, 1, 1e-12);
        nsum += panel[i].noise;
        if (i) CHECK(memcmp(panel[i].w, panel[0].w, sizeof panel[0].w) != 0);
    }
    CHECK_NEAR(nsum / 5, 0.2, 1e-12);
}

/* Strict-pair agreement between two level vectors, counted as rank.h does. */
static void agree_count(const int *a, const int *b, int k, long *agree, long *strict) {
    for (int i = 0; i < k; i++)
        for (int j = i + 1; j < k; j++) {
            if (a[i] == a[j] || b[i] == b[j]) continue;
            (*strict)++;
            *agree += (a[i] < a[j]) == (b[i] < b[j]);
        }
}

static void test_sim_noise_agreement(void) {
    enum { P = 600, K = 4, NA = 3 };
    static float sc[P][K][TASK_NCRIT];
    for (int p = 0; p < P; p++)
        for (int i = 0; i < K; i++)
            for (int c = 0; c < TASK_NCRIT; c++)
                sc[p][i][c] = rng_uniform(99, (uint64_t)p, (uint64_t)(i * TASK_NCRIT + c));
    static const double noise[] = {0, 0.05, 0.15, 0.4};
    double prev = 2;
    for (size_t t = 0; t < sizeof noise / sizeof *noise; t++) {
        annot_sim_t a[NA];
        for (int n = 0; n < NA; n++) {
            snprintf(a[n].id, sizeof a[n].id, "s%d", n);
            for (int c = 0; c < TASK_NCRIT; c++) a[n].w[c] = 0.25;
            a[n].noise = noise[t];
        }
        long agree = 0, strict = 0;
        double expect = 0;
        long nexp = 0;
        for (int p = 0; p < P; p++) {
            int lv[NA][K];
            for (int n = 0; n < NA; n++)
                annot_sim_rank(&a[n], n, 5, (uint64_t)p, (const float(*)[TASK_NCRIT])sc[p], K,
                               lv[n], NULL);
            for (int n = 0; n < NA; n++)
                for (int m = n + 1; m < NA; m++) agree_count(lv[n], lv[m], K, &agree, &strict);
            /* the model's prediction: each annotator orders a pair rightly with probability
             * q = Phi(d / (sigma sqrt 2)); two agree with probability q^2 + (1 - q)^2 */
            for (int i = 0; i < K; i++)
                for (int j = i + 1; j < K; j++) {
                    double d = 0;
                    for (int c = 0; c < TASK_NCRIT; c++) d += 0.25 * (sc[p][i][c] - sc[p][j][c]);
                    double q = noise[t] > 0 ? 0.5 * erfc(-fabs(d) / (2 * noise[t])) : 1;
                    expect += q * q + (1 - q) * (1 - q);
                    nexp++;
                }
        }
        double rate = (double)agree / (double)strict;
        expect /= (double)nexp;
        fprintf(stderr, "  noise %.2f: pairwise agreement %.4f (model %.4f, %ld comparisons)\n",
                noise[t], rate, expect, strict);
        if (t == 0) CHECK_NEAR(rate, 1.0, 0);
        /* statistical: the agreement rate over the printed number of comparisons against the
         * model's prediction; the comparisons share annotators, so 0.025 is an allowance for
         * that correlation rather than a multiple of a binomial sd */
        CHECK_NEAR(rate, expect, 0.025);
        CHECK(rate < prev);
        prev = rate;
    }
}

/* Builds a store from JSONL text over the test completions. */
static void store_from(annot_store_t *s, const annot_comp_t *c, const char *text) {
    const char *path = tmp_path("agg.jsonl");
    write_file(path, text);
    annot_store_init(s, c);
    CHECK_OK(annot_store_read_jsonl(s, path, "2030-01-01T00:00:00Z", "v1"));
}

static void test_aggregate(void) {
    annot_comp_t c;
    load_comp(&c);
    annot_store_t s;
    /* p2 (K = 3): A and B say 0>1>2, C says 1>0>2; D skipped. p1: only B ranked it. */
    store_from(&s, &c,
               "{\"prompt_id\":\"p2\",\"annotator\":\"C\",\"ranking\":[1,0,2]}\n"
               "{\"prompt_id\":\"p2\",\"annotator\":\"A\",\"ranking\":[0,1,2]}\n"
               "{\"prompt_id\":\"p2\",\"annotator\":\"D\",\"skip\":true}\n"
               "{\"prompt_id\":\"p2\",\"annotator\":\"B\",\"ranking\":[0,1,2]}\n"
               "{\"prompt_id\":\"p1\",\"annotator\":\"B\",\"ranking\":[[0,1],2,3]}\n");
    annot_agg_t g;
    CHECK_OK(annot_aggregate(&s, NAN, &g));
    CHECK_EQ(g.n_prompts, 2);
    CHECK_EQ(g.n_annot, 4);
    CHECK_EQ(g.records, 5);
    CHECK_EQ(g.skipped, 1);
    annot_pagg_t *p2 = &g.p[1];
    CHECK_EQ(p2->n_rankings, 3);
    CHECK_EQ(p2->n_skipped, 1);
    CHECK_STREQ(s.v[p2->rec[0]].annotator, "A"); /* annotator-id order */
    CHECK_NEAR(p2->mean_rank[0], 4.0 / 3, 1e-12);
    CHECK_NEAR(p2->mean_rank[1], 5.0 / 3, 1e-12);
    CHECK_NEAR(p2->mean_rank[2], 3.0, 1e-12);
    CHECK(p2->consensus[0] == 0 && p2->consensus[1] == 1 && p2->consensus[2] == 2);
    /* rank sums 4, 5, 9: S = 14, W = 12 * 14 / (3^2 (27 - 3)) */
    CHECK_NEAR(p2->w, 168.0 / 216.0, 1e-12);
    /* A-B agree 3 of 3, A-C and B-C 2 of 3 */
    CHECK_EQ(p2->agree, 7);
    CHECK_EQ(p2->strict, 9);
    CHECK_EQ(g.agree, 7);
    CHECK_EQ(g.strict, 9);
    /* p1 has one ranking: no W, ties within it are not comparisons */
    CHECK_EQ(g.p[0].n_rankings, 1);
    CHECK(isnan(g.p[0].w));
    CHECK(g.p[0].consensus[0] == 0 && g.p[0].consensus[1] == 0 && g.p[0].consensus[3] == 2);
    CHECK_EQ(g.n_w, 1);
    CHECK_EQ(g.overlap_min, 1);
    CHECK_EQ(g.overlap_max, 3);
    CHECK_NEAR(g.overlap_mean, 2.0, 1e-12);
    CHECK_EQ(g.kept, 2);
    /* leave-one-out: A against mean(B, C) = (1.5, 1.5, 3): 0-1 tied, 2 of 2 agree;
     * C against mean(A, B) = (1, 2, 3): 2 of 3 */
    CHECK_STREQ(g.a[0].id, "A");
    CHECK_EQ(g.a[0].loo_agree, 2);
    CHECK_EQ(g.a[0].loo_strict, 2);
    CHECK_EQ(g.a[2].loo_agree, 2);
    CHECK_EQ(g.a[2].loo_strict, 3);
    CHECK_EQ(g.a[3].skipped, 1);
    CHECK_EQ(g.a[3].loo_prompts, 0);
    CHECK(g.alpha > 0 && g.alpha < 1);
    annot_agg_free(&g);
    /* the W filter */
    CHECK_OK(annot_aggregate(&s, 0.8, &g));
    CHECK(!g.p[1].kept && !g.p[0].kept); /* W 0.78 < 0.8; p1's W is undefined */
    CHECK_EQ(g.dropped, 2);
    annot_agg_free(&g);
    CHECK_OK(annot_aggregate(&s, 0.7, &g));
    CHECK(g.p[1].kept && !g.p[0].kept);
    annot_agg_free(&g);
    annot_store_free(&s);

    /* identical rankings: full agreement on every measure */
    store_from(&s, &c,
               "{\"prompt_id\":\"p2\",\"annotator\":\"A\",\"ranking\":[2,0,1]}\n"
               "{\"prompt_id\":\"p2\",\"annotator\":\"B\",\"ranking\":[2,0,1]}\n"
               "{\"prompt_id\":\"p1\",\"annotator\":\"A\",\"ranking\":[3,0,1,2]}\n"
               "{\"prompt_id\":\"p1\",\"annotator\":\"B\",\"ranking\":[3,0,1,2]}\n");
    CHECK_OK(annot_aggregate(&s, NAN, &g));
    CHECK_NEAR(g.mean_w, 1, 1e-12);
    CHECK_NEAR(annot_rate(g.agree, g.strict), 1, 0);
    CHECK_NEAR(g.alpha, 1, 1e-9);
    annot_agg_free(&g);
    annot_store_free(&s);
    annot_comp_free(&c);
}

static void test_sim_panel_file(void) {
    const char *path = tmp_path("panel.json");
    write_file(path, "[{\"id\":\"alice\",\"weights\":{\"correct\":3,\"polite\":1},\"noise\":0.3},"
                     "{\"id\":\"bob\",\"weights\":{\"on-topic\":1}}]");
    annot_sim_t *p;
    int n;
    CHECK_OK(annot_sim_load(path, 0.05, &p, &n));
    CHECK_EQ(n, 2);
    if (n == 2) {
        CHECK_NEAR(p[0].w[TASK_CORRECT], 0.75, 1e-12);
        CHECK_NEAR(p[0].w[TASK_POLITE], 0.25, 1e-12);
        CHECK_NEAR(p[0].noise, 0.3, 1e-12);
        CHECK_NEAR(p[1].w[TASK_ONTOPIC], 1, 1e-12);
        CHECK_NEAR(p[1].noise, 0.05, 1e-7);
    }
    free(p);
    write_file(path, "[{\"id\":\"alice\",\"weights\":{\"kind\":1}}]");
    CHECK_ERR(annot_sim_load(path, 0.05, &p, &n), RL_EFORMAT);
    CHECK(msg_has("annotator 1: weights: unknown criterion 'kind'"));
    write_file(path, "[{\"id\":\"a\",\"weights\":{\"correct\":0}}]");
    CHECK_ERR(annot_sim_load(path, 0.05, &p, &n), RL_EFORMAT);
    write_file(path,
               "[{\"id\":\"a\",\"weights\":{\"correct\":1}},\n{\"id\":\"a\",\"weights\":{}}]");
    CHECK_ERR(annot_sim_load(path, 0.05, &p, &n), RL_EFORMAT);
    CHECK(msg_has("appears twice"));
}

int main(void) {
    RUN(test_completions);
    RUN(test_ranking_text);
    RUN(test_ranking_json);
    RUN(test_time);
    RUN(test_store_jsonl);
    RUN(test_store_csv);
    RUN(test_assign);
    RUN(test_sim_zero_noise);
    RUN(test_sim_noise_agreement);
    RUN(test_sim_panel_file);
    RUN(test_aggregate);
    return TEST_REPORT();
}
