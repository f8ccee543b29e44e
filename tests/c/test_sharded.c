/*
 * Sharded checkpoints (docs/FORMAT.md section 13) through the C ABI:
 *
 * - every case of the sharded corpus (tests/corpus/sharded, listed in its
 *   manifest.json) is refused by pts_sharded_open or pts_sharded_verify
 *   with the manifest's kind and a message containing its substring, the
 *   out-pointer left NULL;
 * - the valid checkpoints of `generate.py --write-valid` list their tensors
 *   in name order with their global shapes, and assemble to the values
 *   generate.py put there (element i of a tensor is its base + i);
 * - consolidation writes a file pts_checkpoint_open reads, and refuses to
 *   replace it.
 *
 * Usage: test_sharded SHARDED_CORPUS_DIR VALID_DIR (VALID_DIR: where
 * `generate.py --write-valid` wrote; the consolidated files go there too)
 */
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases_json.h"
#include "checks.h"
#include "pytorch_saver.h"

#define MAX_CASES 256

/* Opens and verifies one corpus case; it must fail as the manifest says. */
static void check_case(const char *dir, const char *item) {
  char *file = cj_string_member(item, "file");
  char *kind = cj_string_member(item, "kind");
  char *message = cj_string_member(item, "message");
  CHECK(file != NULL && kind != NULL && message != NULL);
  if (file == NULL || kind == NULL || message == NULL) {
    free(file);
    free(kind);
    free(message);
    return;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  pts_sharded_t *sharded = NULL;
  pts_error_t *err = pts_sharded_open(path, &sharded);
  if (err == NULL) {
    err = pts_sharded_verify(sharded);
    pts_sharded_free(sharded);
    sharded = NULL;
  }
  CHECK(err != NULL);
  if (err != NULL) {
    bool same =
        strcmp(pts_error_kind(err), kind) == 0 && strstr(pts_error_message(err), message) != NULL;
    if (!same)
      fprintf(stderr, "%s: got %s: %s\n    expected %s containing \"%s\"\n", file,
              pts_error_kind(err), pts_error_message(err), kind, message);
    CHECK(same);
    CHECK(sharded == NULL);
    pts_error_free(err);
  }
  free(file);
  free(kind);
  free(message);
}

static int run_corpus(const char *dir) {
  char manifest_path[4096];
  snprintf(manifest_path, sizeof manifest_path, "%s/manifest.json", dir);
  char *text = cj_read_file(manifest_path);
  if (text == NULL) {
    fprintf(stderr, "cannot read %s\n", manifest_path);
    return -1;
  }
  static const char *items[MAX_CASES];
  const char *list = cj_member(text, "cases");
  int n = list == NULL ? -1 : cj_elements(list, items, MAX_CASES);
  CHECK(n >= 8);
  for (int i = 0; i < n; i++) check_case(dir, items[i]);
  free(text);
  return n;
}

/* A tensor's info: its dtype and shape must be the given ones. */
static void check_info(const pts_sharded_t *s, const char *name, pts_dtype_t dtype, size_t ndim,
                       const int64_t *shape, size_t nbytes) {
  pts_dtype_t got_dtype = 0;
  const int64_t *got_shape = NULL;
  size_t got_ndim = 99, got_nbytes = 0;
  OK(pts_sharded_tensor_info(s, name, &got_dtype, &got_shape, &got_ndim, &got_nbytes));
  CHECK(got_dtype == dtype);
  CHECK(got_ndim == ndim);
  CHECK(got_nbytes == nbytes);
  for (size_t d = 0; d < ndim && got_ndim == ndim; d++) CHECK(got_shape[d] == shape[d]);
}

static void check_weights(const char *valid) {
  char path[4096];
  snprintf(path, sizeof path, "%s/sharded_weights", valid);
  pts_sharded_t *s = NULL;
  OK(pts_sharded_open(path, &s));
  if (s == NULL) return;

  const char *index = NULL;
  OK(pts_sharded_index(s, &index));
  CHECK(index != NULL && strstr(index, "\"pytorch-saver-sharded\"") != NULL);
  size_t count = 0;
  OK(pts_sharded_tensor_count(s, &count));
  CHECK(count == 4);
  const char *want[] = {"b", "emb", "scale", "w"};
  for (size_t i = 0; i < 4 && count == 4; i++) {
    const char *name = NULL;
    OK(pts_sharded_tensor_name(s, i, &name));
    CHECK(name != NULL && strcmp(name, want[i]) == 0);
  }
  const char *past = NULL;
  pts_error_t *err = pts_sharded_tensor_name(s, 4, &past);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_INVALID_ARGUMENT && past == NULL);
  pts_error_free(err);

  const int64_t w_shape[] = {4, 3}, emb_shape[] = {2, 4};
  check_info(s, "w", PTS_DTYPE_F32, 2, w_shape, 48);
  check_info(s, "emb", PTS_DTYPE_I64, 2, emb_shape, 64);
  check_info(s, "scale", PTS_DTYPE_F64, 0, NULL, 8);

  float w[12];
  OK(pts_sharded_tensor_read(s, "w", w, sizeof w));
  for (int i = 0; i < 12; i++) CHECK(w[i] == (float)i);
  int64_t emb[8];
  OK(pts_sharded_tensor_read(s, "emb", emb, sizeof emb));
  for (int i = 0; i < 8; i++) CHECK(emb[i] == 1000 + i);
  double scale = 0;
  OK(pts_sharded_tensor_read(s, "scale", &scale, sizeof scale));
  CHECK(scale == 7.0);

  err = pts_sharded_tensor_read(s, "w", w, sizeof w - 4);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_INVALID_ARGUMENT);
  pts_error_free(err);
  pts_dtype_t dtype;
  const int64_t *shape;
  size_t ndim, nbytes;
  err = pts_sharded_tensor_info(s, "nope", &dtype, &shape, &ndim, &nbytes);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_NOT_FOUND &&
        strcmp(pts_error_kind(err), "TensorNotFound") == 0);
  pts_error_free(err);

  OK(pts_sharded_verify(s));
  pts_sharded_free(s);

  /* The index itself names the checkpoint too. */
  snprintf(path, sizeof path, "%s/sharded_weights/index.json", valid);
  s = NULL;
  OK(pts_sharded_open(path, &s));
  pts_sharded_free(s);

  pts_sharded_t *none = NULL;
  err = pts_sharded_open(NULL, &none);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_NULL_ARGUMENT && none == NULL);
  pts_error_free(err);
  pts_sharded_free(NULL);
}

static void check_consolidate(const char *valid) {
  char location[4096], out[4096];
  snprintf(location, sizeof location, "%s/sharded_container", valid);
  snprintf(out, sizeof out, "%s/consolidated_container.zip", valid);
  OK(pts_sharded_consolidate(location, out));
  pts_checkpoint_t *c = NULL;
  OK(pts_checkpoint_open(out, &c));
  if (c != NULL) {
    size_t model = 0, optimizer = 0;
    OK(pts_checkpoint_tensor_count(c, PTS_MEMBER_MODEL, &model));
    OK(pts_checkpoint_tensor_count(c, PTS_MEMBER_OPTIMIZER, &optimizer));
    CHECK(model == 4 && optimizer == 12);
    const char *meta = NULL;
    OK(pts_checkpoint_metadata(c, &meta));
    CHECK(meta != NULL && strstr(meta, "\"kind\":\"checkpoint\"") != NULL);
    float fc1[16];
    const char *name = "fc1.weight";
    OK(pts_checkpoint_tensor_read(c, PTS_MEMBER_MODEL, name, fc1, sizeof fc1));
    for (int i = 0; i < 16; i++) CHECK(fc1[i] == (float)i);
    pts_checkpoint_free(c);
  }
  pts_error_t *err = pts_sharded_consolidate(location, out);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_IO &&
        strcmp(pts_error_kind(err), "Io") == 0 &&
        strstr(pts_error_message(err), "never replaces a file") != NULL);
  pts_error_free(err);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SHARDED_CORPUS_DIR VALID_DIR\n", argv[0]);
    return 2;
  }
  int cases = run_corpus(argv[1]);
  if (cases < 0) return 2;
  check_weights(argv[2]);
  check_consolidate(argv[2]);
  printf("sharded: %d corpus cases, %d checks, %d failures\n", cases, checks, failures);
  return failures == 0 ? 0 : 1;
}
