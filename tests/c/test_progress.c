/*
 * Progress callbacks from plain C99 (docs/C_API.md "Progress"): a real
 * save and real loads and opens of a 16 MiB checkpoint report (0, T)
 * first, strictly growing counts, and (T, T) last, T being the file's size
 * for a save; a failing open (a corrupted file) never reports its end; a
 * NULL callback clears the one set. Built and run under AddressSanitizer
 * (leaks included) and UBSan, then under valgrind, by `make c-test`.
 *
 * Usage: test_progress SCRATCH_DIR (an empty directory).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checks.h"
#include "pytorch_saver.h"

#define MAX_CALLS 100000

/* What one operation's callback heard. The library serializes the calls,
 * from whichever thread they come. */
typedef struct {
  size_t count;
  uint64_t done[MAX_CALLS];
  uint64_t total[MAX_CALLS];
} record_t;

static void on_progress(uint64_t done, uint64_t total, void *user_data) {
  record_t *r = user_data;
  if (r->count < MAX_CALLS) {
    r->done[r->count] = done;
    r->total[r->count] = total;
  }
  r->count++;
}

/* The contract of a successful operation; returns its total. */
static uint64_t check_complete(const record_t *r, int line) {
  int before = failures;
  CHECK(r->count >= 2 && r->count <= MAX_CALLS);
  if (r->count < 2 || r->count > MAX_CALLS) return 0;
  uint64_t total = r->total[0];
  CHECK(total > 0);
  CHECK(r->done[0] == 0);
  CHECK(r->done[r->count - 1] == total);
  for (size_t i = 1; i < r->count; i++) {
    CHECK(r->total[i] == total);
    CHECK(r->done[i] > r->done[i - 1]);
  }
  if (failures != before) fprintf(stderr, "  (the operation checked at line %d)\n", line);
  return total;
}

/* A failed operation: started, increasing, never at its end. */
static void check_failed(const record_t *r, int line) {
  int before = failures;
  CHECK(r->count >= 1 && r->count <= MAX_CALLS);
  if (r->count < 1 || r->count > MAX_CALLS) return;
  CHECK(r->done[0] == 0);
  for (size_t i = 0; i < r->count; i++) {
    CHECK(r->total[i] == r->total[0]);
    CHECK(r->done[i] < r->total[0]);
    if (i > 0) CHECK(r->done[i] > r->done[i - 1]);
  }
  if (failures != before) fprintf(stderr, "  (the operation checked at line %d)\n", line);
}

/* How many times the library finalized the user data it was handed. */
static int finalized = 0;

static void count_finalized(void *user_data) { (*(int *)user_data)++; }

static uint64_t file_size(const char *path) {
  struct stat st;
  CHECK(stat(path, &st) == 0);
  return (uint64_t)st.st_size;
}

/* Copies `from` to `to` with one byte in the middle flipped. */
static void write_corrupted(const char *from, const char *to) {
  FILE *in = fopen(from, "rb");
  CHECK(in != NULL);
  if (in == NULL) return;
  uint64_t size = file_size(from);
  unsigned char *bytes = malloc(size);
  CHECK(bytes != NULL && fread(bytes, 1, size, in) == size);
  fclose(in);
  bytes[size / 2] ^= 0x40;
  FILE *out = fopen(to, "wb");
  CHECK(out != NULL && fwrite(bytes, 1, size, out) == size);
  fclose(out);
  free(bytes);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  record_t *r = calloc(1, sizeof *r);

  /* A 16 MiB model: one 2048 x 2048 layer. */
  pts_container_t *c = NULL;
  OK(pts_container_new(NULL, &c));
  OK(pts_container_initialize(
      c, "pytorch_saver.models.MLP",
      "{\"in_dim\": 2048, \"hidden_dim\": 2048, \"n_classes\": 3, \"n_layers\": 1}",
      "torch.optim.SGD", "{\"lr\": 0.1}", NULL, NULL));
  OK(pts_container_set_save_progress(c, on_progress, r, NULL));
  char *path = NULL;
  OK(pts_container_save(c, argv[1], "progress", NULL, &path));
  CHECK(path != NULL);
  if (path == NULL) return 1;
  uint64_t size = file_size(path);
  CHECK(size > 16u << 20);
  CHECK(check_complete(r, __LINE__) == size);
  CHECK(r->count > 4); /* per header, per tensor, per 16 MiB */

  /* Cleared: the next save is not heard. */
  memset(r, 0, sizeof *r);
  OK(pts_container_set_save_progress(c, NULL, NULL, NULL));
  char *second = NULL;
  OK(pts_container_save(c, argv[1], "progress", NULL, &second));
  CHECK(r->count == 0);
  pts_string_free(second);

  /* A verifying open: the CRC-checked bytes, less than the file. */
  pts_load_options_t *options = NULL;
  OK(pts_load_options_new(&options));
  OK(pts_load_options_set_progress(options, on_progress, r, NULL));
  pts_checkpoint_t *ckpt = NULL;
  OK(pts_checkpoint_open_ex(path, options, &ckpt));
  uint64_t checked = check_complete(r, __LINE__);
  CHECK(checked > 16u << 20 && checked < size);
  pts_checkpoint_free(ckpt);

  /* A copying load: the checked bytes and the copied tensor data. */
  memset(r, 0, sizeof *r);
  OK(pts_load_options_set_copy(options, true));
  pts_container_t *loaded = NULL;
  char *metadata = NULL;
  OK(pts_container_load_ex(NULL, path, options, &loaded, &metadata));
  uint64_t load_total = check_complete(r, __LINE__);
  CHECK(load_total > checked + (16u << 20) && load_total < 2 * checked);
  pts_string_free(metadata);
  pts_container_free(loaded);

  /* A corrupted file: the open fails and never reports its end. */
  char corrupted[2048];
  snprintf(corrupted, sizeof corrupted, "%s/corrupted.zip", argv[1]);
  write_corrupted(path, corrupted);
  memset(r, 0, sizeof *r);
  ckpt = NULL;
  pts_error_t *err = pts_checkpoint_open_ex(corrupted, options, &ckpt);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_FORMAT);
  CHECK(err != NULL && strstr(pts_error_message(err), "model.safetensors") != NULL);
  pts_error_free(err);
  CHECK(ckpt == NULL);
  check_failed(r, __LINE__);

  /* Cleared options report nothing. */
  memset(r, 0, sizeof *r);
  OK(pts_load_options_set_progress(options, NULL, NULL, NULL));
  OK(pts_checkpoint_open_ex(path, options, &ckpt));
  CHECK(r->count == 0);
  pts_checkpoint_free(ckpt);

  /* NULL handles are errors, not crashes. */
  err = pts_load_options_set_progress(NULL, on_progress, &finalized, count_finalized);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_NULL_ARGUMENT);
  pts_error_free(err);
  err = pts_container_set_save_progress(NULL, on_progress, &finalized, count_finalized);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_NULL_ARGUMENT);
  pts_error_free(err);
  /* The library owns user data whatever the outcome: finalized on error. */
  CHECK(finalized == 2);

  /* User data lives as long as the library may call with it: until the
   * callback is replaced, or its options or container are freed. */
  OK(pts_load_options_set_progress(options, on_progress, &finalized, count_finalized));
  OK(pts_load_options_set_progress(options, on_progress, r, NULL));
  CHECK(finalized == 3);
  OK(pts_load_options_set_progress(options, on_progress, &finalized, count_finalized));
  OK(pts_container_set_save_progress(c, on_progress, &finalized, count_finalized));
  CHECK(finalized == 3);
  pts_load_options_free(options);
  CHECK(finalized == 4);
  pts_string_free(path);
  pts_container_free(c);
  CHECK(finalized == 5);
  free(r);
  printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
