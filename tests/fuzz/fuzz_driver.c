/* A main() for fuzz_proto.c without libFuzzer, so that any compiler builds a smoke
 * fuzzer (the CTest fuzz.proto):
 *
 *   fuzz_proto_run [SECONDS] [SEED]      (default 20 s, seed from the clock)
 *
 * It starts from valid encodings of every message type (bf_msg_encode), feeds
 * LLVMFuzzerTestOneInput mutations of them (bit flips, byte inserts and deletes,
 * truncation, splicing two inputs, random length and type bytes) and pure random
 * buffers for a bounded time, keeps the mutants the decoder accepts as further
 * seeds, prints the number of executions and exits 0. A crash or a failed
 * round-trip check traps. Coverage-guided runs build fuzz_proto.c alone with
 * clang -fsanitize=fuzzer (see its header). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUT 8192
#define MAX_CORPUS 512

typedef struct {
    uint8_t *data;
    size_t len;
} input_t;

static input_t s_corpus[MAX_CORPUS];
static size_t s_ncorpus = 0;
static uint64_t s_rng;

static uint64_t s_rand(void)
{
    s_rng ^= s_rng >> 12;
    s_rng ^= s_rng << 25;
    s_rng ^= s_rng >> 27;
    return s_rng * 0x2545F4914F6CDD1DULL;
}

static size_t s_below(size_t n)
{
    return n ? (size_t)(s_rand() % n) : 0;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Takes ownership of data. Once the corpus is full, replaces a random mutant
 * (the first seeds, one per message type, stay). */
static void s_add(uint8_t *data, size_t len, size_t keep)
{
    if (s_ncorpus < MAX_CORPUS) {
        s_corpus[s_ncorpus++] = (input_t){data, len};
        return;
    }
    size_t i = keep + s_below(MAX_CORPUS - keep);
    free(s_corpus[i].data);
    s_corpus[i] = (input_t){data, len};
}

static void s_add_msg(const bf_msg_t *m)
{
    char *buf = NULL;
    size_t len = 0;
    if (bf_msg_encode(m, &buf, &len) != 0) {
        fprintf(stderr, "fuzz_proto_run: cannot encode seed %s\n", bf_msg_type_name(m->type));
        exit(1);
    }
    s_add((uint8_t *)buf, len, 0);
}

/* Valid encodings of every message type, with all fields set and with few. */
static void s_seed(void)
{
    static char *env_names[] = {(char *)"SRC_PASSWORD", (char *)"X"};
    static char *env_values[] = {(char *)"s3cr\xc3\xa9t", (char *)""};
    for (int t = BF_MSG_NONE + 1; t < BF_MSG__COUNT; t++) {
        bf_msg_t full = {.type = (bf_msg_type_t)t,
                         .sid = 0x123456789abcdefULL,
                         .ep = 7,
                         .worker_id = (char *)"host-1:4242",
                         .host = (char *)"host-1",
                         .version = (char *)"0.1.0",
                         .pid = 4242,
                         .credit = 1,
                         .heartbeat_ms = 2500,
                         .liveness = 3,
                         .lease_ttl_ms = 30000,
                         .job = (char *)"name: j\nsource: postgresql://a@b/c\n",
                         .env_names = env_names,
                         .env_values = env_values,
                         .nenv = 2,
                         .range_id = 17,
                         .token = 1000017,
                         .table = 2,
                         .seq = 3,
                         .lo = (char *)"-32768",
                         .hi = (char *)"900000000000",
                         .cursor = (char *)"12345",
                         .has_lo = true,
                         .has_hi = true,
                         .has_cursor = true,
                         .retry_after_ms = 1000,
                         .leases = 1,
                         .rows = 2000,
                         .bytes = 123456,
                         .code = (char *)"FENCED",
                         .message = (char *)"tab\there \"quoted\"",
                         .retryable = true,
                         .deadline_ms = 10000,
                         .done = true};
        s_add_msg(&full);
        /* required fields only; open-ended ranges (NULL lo/hi) */
        bf_msg_t few = {.type = (bf_msg_type_t)t,
                        .worker_id = (char *)"w",
                        .job = (char *)"",
                        .has_lo = true,
                        .has_hi = true,
                        .code = (char *)"E"};
        s_add_msg(&few);
    }
}

/* Bytes that start msgpack values whose length or count follows. */
static const uint8_t s_heads[] = {0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd9, 0xda,
                                  0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0x80, 0x90, 0xa0};

/* Writes one mutated input into out (capacity MAX_INPUT); returns its length. */
static size_t s_mutate(uint8_t *out)
{
    const input_t *a = &s_corpus[s_below(s_ncorpus)];
    size_t len = a->len < MAX_INPUT ? a->len : MAX_INPUT;
    memcpy(out, a->data, len);
    int rounds = 1 + (int)s_below(4);
    for (int r = 0; r < rounds; r++) {
        switch (s_below(9)) {
        case 0: /* bit flip */
            if (len)
                out[s_below(len)] ^= (uint8_t)(1u << s_below(8));
            break;
        case 1: /* random byte */
            if (len)
                out[s_below(len)] = (uint8_t)s_rand();
            break;
        case 2: { /* insert bytes */
            size_t n = 1 + s_below(8), at = s_below(len + 1);
            if (len + n > MAX_INPUT)
                break;
            memmove(out + at + n, out + at, len - at);
            for (size_t i = 0; i < n; i++)
                out[at + i] = (uint8_t)s_rand();
            len += n;
            break;
        }
        case 3: { /* delete bytes */
            if (!len)
                break;
            size_t at = s_below(len), n = 1 + s_below(len - at < 8 ? len - at : 8);
            memmove(out + at, out + at + n, len - at - n);
            len -= n;
            break;
        }
        case 4: /* truncate */
            len = s_below(len + 1);
            break;
        case 5: { /* splice: a prefix of this one, a suffix of another */
            const input_t *b = &s_corpus[s_below(s_ncorpus)];
            size_t at = s_below(len + 1), from = s_below(b->len + 1);
            size_t n = b->len - from;
            if (at + n > MAX_INPUT)
                n = MAX_INPUT - at;
            memcpy(out + at, b->data + from, n);
            len = at + n;
            break;
        }
        case 6: { /* a length/count head with an extreme or random length */
            if (!len)
                break;
            size_t at = s_below(len);
            out[at] = s_heads[s_below(sizeof s_heads)];
            size_t n = out[at] >= 0xc4 ? 4 : 0;
            for (size_t i = 1; i <= n && at + i < len; i++)
                out[at + i] = s_below(2) ? 0xff : (uint8_t)s_rand();
            break;
        }
        case 7: /* interesting byte values */
            if (len) {
                static const uint8_t v[] = {0x00, 0x01, 0x7f, 0x80, 0xc0, 0xc1,
                                            0xc2, 0xc3, 0xff, 0xd3, 0xcf, 0xe0};
                out[s_below(len)] = v[s_below(sizeof v)];
            }
            break;
        default: { /* duplicate a chunk in place (repeated keys, deeper nesting) */
            if (!len)
                break;
            size_t at = s_below(len), n = 1 + s_below(len - at < 16 ? len - at : 16);
            if (len + n > MAX_INPUT)
                break;
            memmove(out + at + n, out + at, len - at);
            len += n;
            break;
        }
        }
    }
    return len;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 20;
    uint64_t seed =
        argc > 2 ? strtoull(argv[2], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (argc > 3 || seconds <= 0) {
        fprintf(stderr, "usage: fuzz_proto_run [SECONDS] [SEED]\n");
        return 2;
    }
    s_rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    printf("fuzz_proto_run: %.0f s, seed %llu\n", seconds, (unsigned long long)seed);
    fflush(stdout);

    s_seed();
    size_t nseeds = s_ncorpus;
    unsigned long long execs = 0, accepted = 0;
    for (size_t i = 0; i < nseeds; i++, execs++)
        LLVMFuzzerTestOneInput(s_corpus[i].data, s_corpus[i].len);

    uint8_t *buf = malloc(MAX_INPUT);
    double deadline = s_now() + seconds;
    while (s_now() < deadline) {
        for (int i = 0; i < 256; i++, execs++) {
            size_t len;
            if (s_below(16) == 0) { /* pure random */
                len = s_below(s_below(8) ? 64 : MAX_INPUT);
                for (size_t k = 0; k < len; k++)
                    buf[k] = (uint8_t)s_rand();
            } else {
                len = s_mutate(buf);
            }
            /* an exactly sized copy, so ASan sees any read past the end */
            uint8_t *in = malloc(len ? len : 1);
            memcpy(in, buf, len);
            LLVMFuzzerTestOneInput(in, len);
            bf_msg_t m;
            if (bf_msg_decode(in, len, &m, NULL, 0) == 0) {
                bf_msg_clear(&m);
                accepted++;
                s_add(in, len, nseeds);
            } else {
                free(in);
            }
        }
    }
    free(buf);
    for (size_t i = 0; i < s_ncorpus; i++)
        free(s_corpus[i].data);
    printf("fuzz_proto_run: %llu executions (%llu inputs accepted by the decoder)\n", execs,
           accepted);
    return 0;
}
