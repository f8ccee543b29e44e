/*
 * The shared corpus of hostile but well-formed files (tests/hostile,
 * listed with what their refusal must say in cases.json) through the C
 * ABI: pts_container_load and pts_model_load must return an error object
 * (not crash, not PTS_ERROR_PANIC) whose message contains one of the
 * case's substrings, without the process's peak memory growing by more
 * than 256 MiB. One more case is made here: a model registered from C
 * with no layout (tests.c.Huge), whose factory builds with
 * pts_tensor_empty a tensor of as many floats as the file's kwargs ask
 * (2**30: 4 GiB), in a file that holds 2 of them; it must be refused by
 * the check after the build, naming the tensor, with that memory never
 * touched. Each case runs in a fork()ed child, so that a crash is
 * seen as a signal and the child's peak RSS (VmHWM, reset through
 * /proc/self/clear_refs) is its own. The parent calls nothing in the
 * library before it forks (a child of a process whose libtorch thread
 * pools are running may hang).
 *
 * `make c-test` builds this program twice. Under AddressSanitizer and
 * UBSan it checks that every load returns a clean error with nothing
 * leaked (LeakSanitizer runs at each child's exit); there the memory
 * bound is NOT asserted, because ASan's shadow memory, redzones and
 * quarantine change the process's RSS by amounts that have nothing to do
 * with the loader. The plain build (no sanitizer, no valgrind, whose own
 * bookkeeping would be measured instead) asserts the bound.
 *
 * Usage: test_hostile HOSTILE_DIR
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cases_json.h"
#include "pytorch_saver.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

#define MAX_GROWTH_KIB (256L * 1024)
#define MAX_CASES 256
#define MAX_NEEDLES 16

typedef struct {
  char *file; /* under HOSTILE_DIR, or an absolute path */
  char *needles[MAX_NEEDLES];
  int needle_count;
  bool c_factory;        /* load over a registry holding tests.c.Huge */
  pts_error_code_t code; /* the error code, where the test knows it; 0: any refusal */
} hostile_case;

/* ---- tests.c.Huge: a C factory whose size comes from its kwargs ---------- */

static pts_error_t *huge_forward(void *instance, const pts_tensor_t *input, bool train,
                                 pts_tensor_t **output) {
  (void)instance, (void)input, (void)train, (void)output;
  return pts_error_new(0, "tests.c.Huge has no forward");
}

static pts_error_t *huge_factory(void *user_data, const pts_kwargs_t *kwargs, bool loading,
                                 pts_model_builder_t *builder) {
  (void)user_data;
  int64_t n = 0;
  pts_error_t *err = pts_kwargs_i64(kwargs, "n", &n);
  if (err != NULL) return err;
  if (!loading) return pts_error_new(PTS_ERROR_FACTORY, "tests.c.Huge is only loaded");
  pts_tensor_t *weight = NULL;
  err = pts_tensor_empty(PTS_DTYPE_F32, &n, 1, &weight);
  if (err == NULL) err = pts_model_builder_add_parameter(builder, "huge.weight", weight);
  pts_tensor_free(weight); /* the model shares it */
  pts_error_t *set = pts_model_builder_set_forward(builder, huge_forward, NULL, NULL);
  return err != NULL ? (pts_error_free(set), err) : set;
}

/* ---- a v1 file written by hand (docs/FORMAT.md) --------------------------- */

static uint32_t crc32_of(const unsigned char *data, size_t len) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < len; i++) {
    crc ^= data[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

static void put16(unsigned char **p, uint32_t v) {
  (*p)[0] = (unsigned char)v, (*p)[1] = (unsigned char)(v >> 8);
  *p += 2;
}

static void put32(unsigned char **p, uint32_t v) {
  put16(p, v & 0xffffu);
  put16(p, v >> 16);
}

/* Writes a stored ZIP of `count` members laid out as v1 lays them out
 * (each member's data 64-byte aligned through a padding extra field 0xd935,
 * no gaps, then the central directory). Returns whether it was written. */
static bool write_zip(const char *path, const char **names, const unsigned char **data,
                      const size_t *lens, int count) {
  size_t cap = 4096;
  for (int i = 0; i < count; i++) cap += 2 * (30 + strlen(names[i]) + 128) + lens[i];
  unsigned char *buf = calloc(1, cap), *p = buf;
  unsigned char *central = calloc(1, 4096), *c = central;
  if (buf == NULL || central == NULL) return free(buf), free(central), false;
  for (int i = 0; i < count; i++) {
    size_t name_len = strlen(names[i]), offset = (size_t)(p - buf);
    size_t pad = (64 - (offset + 30 + name_len) % 64) % 64;
    if (pad < 4) pad += 64;
    uint32_t crc = crc32_of(data[i], lens[i]);
    put32(&p, 0x04034b50u);
    put16(&p, 20), put16(&p, 0), put16(&p, 0), put32(&p, 0);
    put32(&p, crc), put32(&p, (uint32_t)lens[i]), put32(&p, (uint32_t)lens[i]);
    put16(&p, (uint32_t)name_len), put16(&p, (uint32_t)pad);
    memcpy(p, names[i], name_len), p += name_len;
    put16(&p, 0xd935u), put16(&p, (uint32_t)(pad - 4));
    p += pad - 4;
    memcpy(p, data[i], lens[i]), p += lens[i];

    put32(&c, 0x02014b50u);
    put16(&c, 20), put16(&c, 20), put16(&c, 0), put16(&c, 0), put32(&c, 0);
    put32(&c, crc), put32(&c, (uint32_t)lens[i]), put32(&c, (uint32_t)lens[i]);
    put16(&c, (uint32_t)name_len), put32(&c, 0), put32(&c, 0), put32(&c, 0);
    put32(&c, (uint32_t)offset);
    memcpy(c, names[i], name_len), c += name_len;
  }
  size_t cd_offset = (size_t)(p - buf), cd_len = (size_t)(c - central);
  memcpy(p, central, cd_len), p += cd_len;
  put32(&p, 0x06054b50u), put32(&p, 0);
  put16(&p, (uint32_t)count), put16(&p, (uint32_t)count);
  put32(&p, (uint32_t)cd_len), put32(&p, (uint32_t)cd_offset), put16(&p, 0);
  FILE *f = fopen(path, "wb");
  bool written = f != NULL && fwrite(buf, 1, (size_t)(p - buf), f) == (size_t)(p - buf);
  if (f != NULL && fclose(f) != 0) written = false;
  free(buf);
  free(central);
  return written;
}

/* A file whose model_kwargs ask tests.c.Huge for 2**30 floats and whose
 * model member holds a tensor of 2. */
static bool write_huge_file(const char *path) {
  static const char metadata[] =
      "{\"model_kwargs\": {\"n\": 1073741824}, \"timestamp\": 1700000000, "
      "\"__pytorch_saver__\": {\"format_version\": 1, \"kind\": \"inference\", "
      "\"model\": {\"class\": \"tests.c.Huge\"}, \"producer\": {\"library\": "
      "\"pytorch-saver\", \"version\": \"0.1.0\", \"language\": \"c\"}}}";
  /* safetensors: an 8-byte little-endian header length, the header
   * (padded with spaces to 8), then 2 floats (1.0, 2.0). */
  static const char header[] =
      "{\"huge.weight\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}";
  unsigned char model[256];
  size_t header_len = (sizeof header - 1 + 7) / 8 * 8;
  memset(model, ' ', sizeof model);
  for (int i = 0; i < 8; i++) model[i] = (unsigned char)((uint64_t)header_len >> (8 * i));
  memcpy(model + 8, header, sizeof header - 1);
  static const unsigned char values[8] = {0, 0, 128, 63, 0, 0, 0, 64};
  memcpy(model + 8 + header_len, values, sizeof values);
  const char *names[2] = {"metadata.json", "model.safetensors"};
  const unsigned char *data[2] = {(const unsigned char *)metadata, model};
  size_t lens[2] = {sizeof metadata - 1, 8 + header_len + sizeof values};
  return write_zip(path, names, data, lens, 2);
}

/* Reads every case of cases.json (a list of objects, each with a "file"
 * string and a "message_contains_any" list of strings) into `cases`;
 * returns the count, or -1 (and says why) when the file is not that or
 * lists more than `max` cases. */
static int parse_cases(const char *text, hostile_case *cases, int max) {
  static const char *items[MAX_CASES];
  int n = cj_elements(text, items, max);
  if (n < 0) return fprintf(stderr, "not a list of at most %d cases\n", max), -1;
  for (int i = 0; i < n; i++) {
    hostile_case *c = &cases[i];
    memset(c, 0, sizeof *c);
    if ((c->file = cj_string_member(items[i], "file")) == NULL) {
      return fprintf(stderr, "case %d: no \"file\" string\n", i), -1;
    }
    const char *needles[MAX_NEEDLES];
    const char *list = cj_member(items[i], "message_contains_any");
    c->needle_count = list == NULL ? -1 : cj_elements(list, needles, MAX_NEEDLES);
    if (c->needle_count <= 0) {
      c->needle_count = 0;
      return fprintf(stderr, "%s: message_contains_any is not a list of 1 to %d strings\n", c->file,
                     MAX_NEEDLES),
             -1;
    }
    for (int k = 0; k < c->needle_count; k++) {
      if ((c->needles[k] = cj_string(&needles[k])) == NULL) {
        return fprintf(stderr, "%s: substring %d is not a string\n", c->file, k), -1;
      }
    }
  }
  return n;
}

/* A field of /proc/self/status in KiB, or -1. */
static long status_kib(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  char line[256];
  long value = -1;
  size_t len = strlen(field);
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, field, len) == 0 && line[len] == ':') {
      value = strtol(line + len + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return value;
}

/* Resets the peak RSS to the current RSS (proc(5)); returns the baseline. */
static long reset_peak(void) {
  FILE *f = fopen("/proc/self/clear_refs", "w");
  if (f == NULL) return -1;
  bool written = fputs("5", f) >= 0;
  if (fclose(f) != 0 || !written) return -1;
  return status_kib("VmRSS");
}

/* Checks one load's outcome; returns the number of failures. */
static int check_outcome(const hostile_case *c, const char *api, pts_error_t *err, bool loaded,
                         long baseline, long peak) {
  int failures = 0;
  if (err == NULL) {
    fprintf(stderr, "%s: %s loaded the file\n", c->file, api);
    return 1;
  }
  const char *message = pts_error_message(err);
  pts_error_code_t code = pts_error_code(err);
  printf("%s: %s: [%u] %s (peak %ld KiB, baseline %ld KiB)\n", c->file, api, code, message, peak,
         baseline);
  if (code == 0 || code == PTS_ERROR_PANIC || (c->code != 0 && code != c->code)) {
    fprintf(stderr, "%s: %s: code %u is not the expected refusal\n", c->file, api, code);
    failures++;
  }
  if (loaded) {
    fprintf(stderr, "%s: %s wrote its out-pointers on error\n", c->file, api);
    failures++;
  }
  bool named = false;
  for (int i = 0; i < c->needle_count; i++) named = named || strstr(message, c->needles[i]) != NULL;
  if (!named) {
    fprintf(stderr, "%s: %s: \"%s\" contains none of the case's substrings\n", c->file, api,
            message);
    failures++;
  }
  if (!UNDER_ASAN) {
    if (baseline < 0 || peak < 0) {
      fprintf(stderr, "%s: %s: could not read or reset the peak RSS\n", c->file, api);
      failures++;
    } else if (peak > baseline + MAX_GROWTH_KIB) {
      fprintf(stderr, "%s: %s: peak RSS %ld KiB is more than %ld KiB above the baseline %ld KiB\n",
              c->file, api, peak, MAX_GROWTH_KIB, baseline);
      failures++;
    }
  }
  pts_error_free(err);
  return failures;
}

/* What a child runs: both loads of one file. Returns the failure count. */
static int run_case(const hostile_case *c, const char *dir) {
  char path[4096];
  if (c->file[0] == '/') {
    snprintf(path, sizeof path, "%s", c->file);
  } else {
    snprintf(path, sizeof path, "%s/%s", dir, c->file);
  }
  int failures = 0;
  pts_registry_t *registry = NULL;
  if (c->c_factory) {
    pts_error_t *err = pts_registry_new(&registry);
    if (err == NULL)
      err = pts_registry_register_model(registry, "tests.c.Huge", huge_factory, NULL, NULL);
    if (err != NULL) {
      fprintf(stderr, "%s: cannot register tests.c.Huge: %s\n", c->file, pts_error_message(err));
      pts_error_free(err);
      pts_registry_free(registry);
      return 1;
    }
  }

  /* libtorch's own start-up is not the load's doing. */
  pts_tensor_t *warm = NULL;
  int64_t four = 4;
  pts_error_free(pts_tensor_empty(PTS_DTYPE_F32, &four, 1, &warm));
  pts_tensor_free(warm);

  pts_container_t *container = NULL;
  char *meta = NULL;
  long baseline = reset_peak();
  pts_error_t *err = pts_container_load(registry, path, &container, &meta);
  long peak = status_kib("VmHWM");
  failures += check_outcome(c, "pts_container_load", err, container != NULL || meta != NULL,
                            baseline, peak);
  pts_container_free(container);
  pts_string_free(meta);

  pts_model_t *model = NULL;
  meta = NULL;
  baseline = reset_peak();
  err = pts_model_load(registry, path, NULL, &model, &meta);
  peak = status_kib("VmHWM");
  failures +=
      check_outcome(c, "pts_model_load", err, model != NULL || meta != NULL, baseline, peak);
  pts_model_free(model);
  pts_string_free(meta);
  pts_registry_free(registry);
  return failures;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s HOSTILE_DIR\n", argv[0]);
    return 2;
  }
  char cases_path[4096];
  snprintf(cases_path, sizeof cases_path, "%s/cases.json", argv[1]);
  char *text = cj_read_file(cases_path);
  if (text == NULL) {
    fprintf(stderr, "cannot read %s\n", cases_path);
    return 2;
  }
  static hostile_case cases[MAX_CASES];
  /* One slot stays free for the C factory's case. */
  int n = parse_cases(text, cases, MAX_CASES - 1);
  free(text);
  if (n <= 0) {
    fprintf(stderr, "%s: no cases read\n", cases_path);
    return 2;
  }
  /* The C factory's case, in a file of its own. */
  const char *tmp = getenv("TMPDIR");
  char huge_path[4096];
  snprintf(huge_path, sizeof huge_path, "%s/pts_hostile_huge_XXXXXX", tmp != NULL ? tmp : "/tmp");
  int fd = mkstemp(huge_path);
  if (fd < 0 || close(fd) != 0 || !write_huge_file(huge_path)) {
    fprintf(stderr, "cannot write %s\n", huge_path);
    return 2;
  }
  hostile_case *huge = &cases[n++];
  memset(huge, 0, sizeof *huge);
  huge->file = malloc(strlen(huge_path) + 1);
  strcpy(huge->file, huge_path);
  huge->needles[huge->needle_count++] = malloc(sizeof "huge.weight");
  strcpy(huge->needles[0], "huge.weight");
  huge->c_factory = true;
  huge->code = PTS_ERROR_STATE_MISMATCH;

  int failed = 0;
  for (int i = 0; i < n; i++) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
      perror("fork");
      return 2;
    }
    if (pid == 0) {
      alarm(30); /* only a guard against a hang: SIGALRM shows as a signal */
      int failures = run_case(&cases[i], argv[1]);
      for (int j = 0; j < n; j++) {
        free(cases[j].file);
        for (int k = 0; k < cases[j].needle_count; k++) free(cases[j].needles[k]);
      }
      fflush(stdout);
      exit(failures == 0 ? 0 : 1); /* exit, not _exit: LeakSanitizer runs */
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status)) {
      fprintf(stderr, "%s: the child died of signal %d\n", cases[i].file, WTERMSIG(status));
      failed++;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "%s: FAILED (exit status %d)\n", cases[i].file, WEXITSTATUS(status));
      failed++;
    }
  }
  unlink(huge_path);
  for (int j = 0; j < n; j++) {
    free(cases[j].file);
    for (int k = 0; k < cases[j].needle_count; k++) free(cases[j].needles[k]);
  }
  printf("hostile files%s: %d cases, %d failed\n", UNDER_ASAN ? " (ASan: memory not bounded)" : "",
         n, failed);
  return failed == 0 ? 0 : 1;
}
