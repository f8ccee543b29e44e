/*
 * Tests of the checkpoint manager's C ABI (docs/C_API.md "Checkpoint
 * managers", docs/FORMAT.md section 12) from plain C99: retention by
 * keep_last, keep_best and pins, list and latest as JSON, background
 * saves, resuming bit for bit, falling back past a damaged newest file, and
 * the series lock. Built and run under AddressSanitizer (leaks included)
 * and UBSan, then under valgrind, by `make c-test`.
 *
 * Usage: test_manager SCRATCH_DIR (an empty directory).
 */
#define _POSIX_C_SOURCE 200809L /* truncate, access */

#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checks.h"
#include "pytorch_saver.h"

/* A call that must fail with `code`, kind `kind` (NULL: any) and a message
 * containing `needle`. */
#define FAILS(call, code, kind, needle) \
  expect_error((call), (code), (kind), (needle), #call, __LINE__)

static void expect_error(pts_error_t *err, pts_error_code_t code, const char *kind,
                         const char *needle, const char *what, int line) {
  checks++;
  if (err == NULL) {
    failures++;
    fprintf(stderr, "%s:%d: %s succeeded, expected error %u\n", __FILE__, line, what, code);
    return;
  }
  const char *message = pts_error_message(err);
  if (pts_error_code(err) != code || strstr(message, needle) == NULL ||
      (kind != NULL && strcmp(pts_error_kind(err), kind) != 0)) {
    failures++;
    fprintf(stderr, "%s:%d: %s: got [%u] %s (kind %s); expected [%u] kind %s containing \"%s\"\n",
            __FILE__, line, what, pts_error_code(err), message, pts_error_kind(err), code,
            kind == NULL ? "(any)" : kind, needle);
  }
  pts_error_free(err);
}

static char scratch_dir[1024];

/* A directory of its own under the scratch directory for each test. */
static const char *series_dir(const char *name) {
  static char path[2048];
  snprintf(path, sizeof path, "%s/%s", scratch_dir, name);
  return path;
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

/* The number of files in `dir` named `{prefix}_checkpoint_*.zip`. */
static int checkpoint_files(const char *dir, const char *prefix) {
  char stem[256];
  snprintf(stem, sizeof stem, "%s_checkpoint_", prefix);
  DIR *d = opendir(dir);
  if (d == NULL) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (strncmp(e->d_name, stem, strlen(stem)) == 0 && len > 4 &&
        strcmp(e->d_name + len - 4, ".zip") == 0) {
      n++;
    }
  }
  closedir(d);
  return n;
}

/* The `index`th top-level object of the JSON array `text`, copied into
 * `out` (false when there is none). Paths hold no braces, so counting
 * braces finds each object's end. */
static bool json_array_object(const char *text, size_t index, char *out, size_t cap) {
  const char *p = text;
  for (size_t i = 0;; i++) {
    p = strchr(p, '{');
    if (p == NULL) return false;
    const char *q = p;
    int depth = 0;
    do {
      if (*q == '{') depth++;
      if (*q == '}') depth--;
      q++;
    } while (depth > 0 && *q != '\0');
    if (i == index) {
      size_t len = (size_t)(q - p);
      if (len >= cap) return false;
      memcpy(out, p, len);
      out[len] = '\0';
      return true;
    }
    p = q;
  }
}

static size_t json_array_length(const char *text) {
  char object[4096];
  size_t n = 0;
  while (json_array_object(text, n, object, sizeof object)) n++;
  return n;
}

/* A container of the built-in MLP with SGD, freshly (randomly) initialized. */
static pts_container_t *new_mlp(void) {
  pts_container_t *c = NULL;
  OK(pts_container_new(NULL, &c));
  if (c == NULL) return NULL;
  OK(pts_container_initialize(c, "pytorch_saver.models.MLP",
                              "{\"in_dim\": 4, \"hidden_dim\": 8, \"n_classes\": 3}",
                              "torch.optim.SGD", "{\"lr\": 0.1}", NULL, NULL));
  return c;
}

/* Whether a call succeeded; the error, if any, is freed. */
static bool succeeded(pts_error_t *err) {
  bool ok = err == NULL;
  pts_error_free(err);
  return ok;
}

/* Whether two containers hold the same parameters, names and bytes. */
static bool same_parameters(const pts_container_t *a, const pts_container_t *b) {
  size_t na = 0, nb = 1;
  if (!succeeded(pts_container_parameter_count(a, &na)) ||
      !succeeded(pts_container_parameter_count(b, &nb)) || na != nb || na == 0) {
    return false;
  }
  bool same = true;
  for (size_t i = 0; i < na && same; i++) {
    const char *a_name = NULL, *b_name = NULL;
    pts_tensor_t *ta = NULL, *tb = NULL;
    size_t la = 0, lb = 1;
    same = succeeded(pts_container_parameter(a, i, &a_name, &ta)) &&
           succeeded(pts_container_parameter(b, i, &b_name, &tb)) && strcmp(a_name, b_name) == 0 &&
           succeeded(pts_tensor_nbytes(ta, &la)) && succeeded(pts_tensor_nbytes(tb, &lb)) &&
           la == lb;
    if (same) {
      unsigned char *ba = malloc(la + 1), *bb = malloc(lb + 1);
      same = succeeded(pts_tensor_copy_to_buffer(ta, ba, la)) &&
             succeeded(pts_tensor_copy_to_buffer(tb, bb, lb)) && memcmp(ba, bb, la) == 0;
      free(ba);
      free(bb);
    }
    pts_tensor_free(ta);
    pts_tensor_free(tb);
  }
  return same;
}

/* Saves `c` at `step` with metadata `{"loss": loss}`; returns the path. */
static char *save_loss(pts_manager_t *m, const pts_container_t *c, uint64_t step, double loss) {
  char meta[64];
  snprintf(meta, sizeof meta, "{\"loss\": %g}", loss);
  char *path = NULL;
  OK(pts_manager_save(m, c, step, meta, &path));
  CHECK(path != NULL);
  return path;
}

static void test_keep_last_list_latest_and_pins(void) {
  const char *dir = series_dir("keep_last");
  pts_manager_t *m = NULL;
  OK(pts_manager_open(dir, "{\"prefix\": \"run\", \"keep_last\": 2}", &m));
  pts_container_t *c = new_mlp();
  if (m == NULL || c == NULL) return;

  char *paths[4];
  for (int i = 0; i < 4; i++) paths[i] = save_loss(m, c, (uint64_t)(i + 1), 1.0 / (i + 1));
  CHECK(checkpoint_files(dir, "run") == 2);
  /* (A deleted file's name is free again: a later save of the same second
   * may take it, so only the kept paths are checked by name.) */
  CHECK(exists(paths[2]) && exists(paths[3]));

  char *latest = NULL;
  OK(pts_manager_latest(m, &latest));
  CHECK(latest != NULL && strstr(latest, "\"step\":4") != NULL);
  CHECK(latest != NULL && strstr(latest, paths[3]) != NULL);
  pts_string_free(latest);

  /* list: oldest first, with the step, the metrics and the keeping rules. */
  char *list = NULL, older[4096], newer[4096];
  OK(pts_manager_list(m, &list));
  CHECK(list != NULL && json_array_length(list) == 2);
  if (list != NULL && json_array_object(list, 0, older, sizeof older) &&
      json_array_object(list, 1, newer, sizeof newer)) {
    CHECK(strstr(older, "\"step\":3") != NULL && strstr(older, paths[2]) != NULL);
    CHECK(strstr(older, "\"metrics\":{\"loss\":0.3333") != NULL);
    CHECK(strstr(older, "\"kept_by\":[\"last\"]") != NULL);
    CHECK(strstr(older, "\"timestamp\":") != NULL);
    CHECK(strstr(newer, "\"step\":4") != NULL && strstr(newer, "\"loss\":0.25") != NULL);
    CHECK(strstr(newer, "\"kept_by\":[\"latest\",\"last\"]") != NULL);
  }
  pts_string_free(list);

  /* A pinned checkpoint outlives keep_last until it is unpinned. */
  OK(pts_manager_pin(m, paths[2], true));
  char *fifth = save_loss(m, c, 5, 0.2);
  CHECK(checkpoint_files(dir, "run") == 3 && exists(paths[2]));
  OK(pts_manager_list(m, &list));
  CHECK(list != NULL && json_array_object(list, 0, older, sizeof older) &&
        strstr(older, "\"step\":3") != NULL && strstr(older, "\"kept_by\":[\"pinned\"]") != NULL);
  pts_string_free(list);
  OK(pts_manager_pin(m, paths[2], false));
  char *sixth = save_loss(m, c, 6, 0.1);
  CHECK(checkpoint_files(dir, "run") == 2 && !exists(paths[2]) && exists(fifth) && exists(sixth));
  FAILS(pts_manager_pin(m, paths[0], true), PTS_ERROR_USAGE, NULL, "");

  /* The policy's metric, when it names one, is required: not here. A
   * reserved key is refused before anything is written. */
  char *path = NULL;
  FAILS(pts_manager_save(m, c, 7, "{\"timestamp\": 1}", &path), PTS_ERROR_INVALID_METADATA, NULL,
        "reserved");
  CHECK(path == NULL && checkpoint_files(dir, "run") == 2);

  for (int i = 0; i < 4; i++) pts_string_free(paths[i]);
  pts_string_free(fifth);
  pts_string_free(sixth);
  OK(pts_manager_close(m));
  pts_container_free(c);
}

static void test_keep_best(void) {
  const char *dir = series_dir("keep_best");
  pts_manager_t *m = NULL;
  OK(pts_manager_open(dir,
                      "{\"prefix\": \"run\", \"keep_last\": 1, \"keep_best\": 1, "
                      "\"metric\": \"loss\", \"mode\": \"min\"}",
                      &m));
  pts_container_t *c = new_mlp();
  if (m == NULL || c == NULL) return;
  const double losses[4] = {0.5, 0.1, 0.7, 0.9};
  char *paths[4];
  for (int i = 0; i < 4; i++) paths[i] = save_loss(m, c, (uint64_t)(i + 1) * 10, losses[i]);
  CHECK(checkpoint_files(dir, "run") == 2);
  CHECK(exists(paths[1]) && exists(paths[3]));

  char *list = NULL, best[4096], latest[4096];
  OK(pts_manager_list(m, &list));
  CHECK(list != NULL && json_array_length(list) == 2);
  if (list != NULL && json_array_object(list, 0, best, sizeof best) &&
      json_array_object(list, 1, latest, sizeof latest)) {
    CHECK(strstr(best, "\"step\":20") != NULL && strstr(best, "\"loss\":0.1") != NULL);
    CHECK(strstr(best, paths[1]) != NULL && strstr(latest, paths[3]) != NULL);
    CHECK(strstr(best, "\"kept_by\":[\"best\"]") != NULL);
    CHECK(strstr(latest, "\"step\":40") != NULL);
    CHECK(strstr(latest, "\"kept_by\":[\"latest\",\"last\"]") != NULL);
  }
  pts_string_free(list);

  /* The metric is required before anything is written. */
  char *path = NULL;
  FAILS(pts_manager_save(m, c, 50, "{\"accuracy\": 0.5}", &path), PTS_ERROR_INVALID_METADATA, NULL,
        "loss");
  FAILS(pts_manager_save(m, c, 50, NULL, &path), PTS_ERROR_INVALID_METADATA, NULL, "loss");
  CHECK(path == NULL && checkpoint_files(dir, "run") == 2);

  for (int i = 0; i < 4; i++) pts_string_free(paths[i]);
  OK(pts_manager_close(m));
  pts_container_free(c);
}

static void test_save_async_and_wait(void) {
  const char *dir = series_dir("async");
  pts_manager_t *m = NULL;
  OK(pts_manager_open(dir, "{\"prefix\": \"bg\", \"keep_last\": 2}", &m));
  pts_container_t *a = new_mlp(), *b = new_mlp();
  if (m == NULL || a == NULL || b == NULL) return;
  CHECK(!same_parameters(a, b));

  char *path = (char *)"unset";
  OK(pts_manager_wait(m, &path)); /* nothing in flight */
  CHECK(path == NULL);

  OK(pts_manager_save_async(m, a, 1, "{\"loss\": 1.0}"));
  OK(pts_manager_save_async(m, b, 2, "{\"loss\": 0.5}")); /* waits for the first */
  OK(pts_manager_save_async(m, a, 3, "{\"loss\": 0.25}"));
  OK(pts_manager_wait(m, &path));
  CHECK(path != NULL && exists(path) && strstr(path, "/bg_checkpoint_") != NULL);
  char *again = (char *)"unset";
  OK(pts_manager_wait(m, &again));
  CHECK(again == NULL);
  CHECK(checkpoint_files(dir, "bg") == 2);

  char *latest = NULL;
  OK(pts_manager_latest(m, &latest));
  CHECK(latest != NULL && strstr(latest, "\"step\":3") != NULL &&
        strstr(latest, "\"loss\":0.25") != NULL);
  CHECK(latest != NULL && path != NULL && strstr(latest, path) != NULL);
  pts_string_free(latest);
  pts_string_free(path);

  /* The file holds what the container held when save_async returned. */
  pts_container_t *loaded = NULL;
  char *meta = NULL, *skipped = NULL;
  OK(pts_manager_load_latest(m, NULL, NULL, &loaded, &meta, &skipped));
  CHECK(loaded != NULL && same_parameters(loaded, a) && !same_parameters(loaded, b));
  CHECK(meta != NULL && strstr(meta, "\"loss\":0.25") != NULL);
  CHECK(skipped != NULL && strcmp(skipped, "[]") == 0);
  pts_string_free(meta);
  pts_string_free(skipped);
  pts_container_free(loaded);

  /* A background save's error is collected by wait. */
  pts_manager_t *strict = NULL;
  OK(pts_manager_open(dir, "{\"prefix\": \"strict\", \"keep_best\": 1, \"metric\": \"loss\"}",
                      &strict));
  FAILS(pts_manager_save_async(strict, a, 1, "{\"acc\": 1}"), PTS_ERROR_INVALID_METADATA, NULL,
        "loss");
  OK(pts_manager_close(strict));

  OK(pts_manager_save_async(m, b, 4, "{\"loss\": 0.125}"));
  OK(pts_manager_close(m)); /* waits for the save */
  CHECK(checkpoint_files(dir, "bg") == 2);
  pts_container_free(a);
  pts_container_free(b);
}

static void test_restore_latest_bit_for_bit(void) {
  const char *dir = series_dir("restore");
  pts_manager_t *m = NULL;
  OK(pts_manager_open(dir, "{\"prefix\": \"run\"}", &m));
  pts_container_t *saved = new_mlp(), *fresh = new_mlp();
  if (m == NULL || saved == NULL || fresh == NULL) return;

  /* Nothing to resume from is not an error. */
  char *meta = (char *)"unset", *skipped = NULL;
  OK(pts_manager_restore_latest(m, fresh, NULL, &meta, &skipped));
  CHECK(meta == NULL && skipped != NULL && strcmp(skipped, "[]") == 0);
  pts_string_free(skipped);
  pts_container_t *none = (pts_container_t *)saved;
  OK(pts_manager_load_latest(m, NULL, NULL, &none, &meta, &skipped));
  CHECK(none == NULL && meta == NULL && skipped != NULL && strcmp(skipped, "[]") == 0);
  pts_string_free(skipped);
  char *latest = NULL;
  OK(pts_manager_latest(m, &latest));
  CHECK(latest != NULL && strcmp(latest, "null") == 0);
  pts_string_free(latest);

  char *path = save_loss(m, saved, 100, 0.75);
  CHECK(!same_parameters(saved, fresh));
  OK(pts_manager_restore_latest(m, fresh, NULL, &meta, &skipped));
  CHECK(same_parameters(saved, fresh));
  CHECK(meta != NULL && strstr(meta, "\"loss\":0.75") != NULL);
  CHECK(skipped != NULL && strcmp(skipped, "[]") == 0);
  pts_string_free(meta);
  pts_string_free(skipped);
  pts_string_free(path);
  OK(pts_manager_close(m));
  pts_container_free(saved);
  pts_container_free(fresh);
}

static void test_fallback_past_a_truncated_newest(void) {
  const char *dir = series_dir("fallback");
  pts_manager_t *m = NULL;
  OK(pts_manager_open(dir, "{\"prefix\": \"run\"}", &m));
  pts_container_t *good = new_mlp(), *damaged = new_mlp();
  if (m == NULL || good == NULL || damaged == NULL) return;
  char *good_path = save_loss(m, good, 1, 0.5);
  char *bad_path = save_loss(m, damaged, 2, 0.4);
  struct stat st;
  CHECK(bad_path != NULL && stat(bad_path, &st) == 0);
  CHECK(truncate(bad_path, st.st_size / 2) == 0);

  /* The truncated file is not listed, nor deleted. */
  char *list = NULL;
  OK(pts_manager_list(m, &list));
  CHECK(list != NULL && json_array_length(list) == 1 && strstr(list, "\"step\":1") != NULL);
  pts_string_free(list);
  CHECK(exists(bad_path));

  pts_container_t *loaded = NULL;
  char *meta = NULL, *skipped = NULL, entry[4096];
  OK(pts_manager_load_latest(m, NULL, NULL, &loaded, &meta, &skipped));
  CHECK(loaded != NULL && same_parameters(loaded, good));
  CHECK(meta != NULL && strstr(meta, "\"loss\":0.5") != NULL);
  CHECK(skipped != NULL && json_array_length(skipped) == 1);
  CHECK(skipped != NULL && json_array_object(skipped, 0, entry, sizeof entry) &&
        strstr(entry, bad_path) != NULL && strstr(entry, "\"kind\":\"") != NULL &&
        strstr(entry, "\"message\":\"") != NULL);
  pts_string_free(meta);
  pts_string_free(skipped);
  pts_container_free(loaded);

  pts_container_t *into = new_mlp();
  CHECK(!same_parameters(into, good));
  OK(pts_manager_restore_latest(m, into, NULL, &meta, &skipped));
  CHECK(same_parameters(into, good));
  CHECK(skipped != NULL && json_array_length(skipped) == 1 && strstr(skipped, bad_path) != NULL);
  pts_string_free(meta);
  pts_string_free(skipped);

  /* Every file damaged: the newest one's error. */
  CHECK(good_path != NULL && truncate(good_path, 10) == 0);
  FAILS(pts_manager_restore_latest(m, into, NULL, &meta, &skipped), PTS_ERROR_FORMAT, NULL, "");
  CHECK(same_parameters(into, good)); /* left as it was */

  pts_string_free(good_path);
  pts_string_free(bad_path);
  OK(pts_manager_close(m));
  pts_container_free(into);
  pts_container_free(good);
  pts_container_free(damaged);
}

static void test_lock(void) {
  const char *dir = series_dir("lock");
  pts_manager_t *first = NULL, *second = NULL, *other = NULL;
  OK(pts_manager_open(dir, "{\"prefix\": \"run\"}", &first));
  FAILS(pts_manager_open(dir, "{\"prefix\": \"run\"}", &second), PTS_ERROR_LOCKED, "Locked", "run");
  CHECK(second == NULL);
  FAILS(pts_manager_open(dir, "{\"prefix\": \"run\"}", &second), PTS_ERROR_LOCKED, "Locked", dir);
  /* Another prefix is another series. */
  OK(pts_manager_open(dir, "{\"prefix\": \"other\"}", &other));
  OK(pts_manager_close(first));
  OK(pts_manager_open(dir, "{\"prefix\": \"run\"}", &second));
  CHECK(second != NULL);
  pts_manager_free(second); /* free releases the lock too */
  OK(pts_manager_open(dir, "{\"prefix\": \"run\"}", &second));
  OK(pts_manager_close(second));
  OK(pts_manager_close(other));
}

static void test_argument_errors(void) {
  const char *dir = series_dir("errors");
  pts_manager_t *m = NULL;
  FAILS(pts_manager_open(dir, "{\"prefix\": \"run\", \"keep_lats\": 2}", &m),
        PTS_ERROR_INVALID_ARGUMENT, NULL, "keep_lats");
  FAILS(pts_manager_open(dir, "{\"keep_last\": \"two\"}", &m), PTS_ERROR_INVALID_ARGUMENT, NULL,
        "keep_last");
  FAILS(pts_manager_open(dir, "{\"mode\": \"lowest\"}", &m), PTS_ERROR_INVALID_ARGUMENT, NULL,
        "mode");
  FAILS(pts_manager_open(dir, "{\"keep_last\": 0}", &m), PTS_ERROR_USAGE, NULL, "keep_last");
  FAILS(pts_manager_open(dir, "{\"keep_best\": 1}", &m), PTS_ERROR_USAGE, NULL, "metric");
  FAILS(pts_manager_open(dir, "{\"prefix\": \".hidden\"}", &m), PTS_ERROR_USAGE, NULL, "prefix");
  FAILS(pts_manager_open(dir, "[1]", &m), PTS_ERROR_INVALID_JSON, NULL, "");
  FAILS(pts_manager_open(NULL, NULL, &m), PTS_ERROR_NULL_ARGUMENT, NULL, "dir");
  FAILS(pts_manager_open(dir, NULL, NULL), PTS_ERROR_NULL_ARGUMENT, NULL, "out");
  CHECK(m == NULL);

  OK(pts_manager_open(dir, NULL, &m)); /* prefix "checkpoint", keep everything */
  if (m == NULL) return;
  char *path = NULL, *json = NULL;
  FAILS(pts_manager_save(m, NULL, 1, NULL, &path), PTS_ERROR_NULL_ARGUMENT, NULL, "container");
  FAILS(pts_manager_save(NULL, NULL, 1, NULL, &path), PTS_ERROR_NULL_ARGUMENT, NULL, "manager");
  FAILS(pts_manager_list(NULL, &json), PTS_ERROR_NULL_ARGUMENT, NULL, "manager");
  FAILS(pts_manager_latest(m, NULL), PTS_ERROR_NULL_ARGUMENT, NULL, "json");
  FAILS(pts_manager_pin(m, NULL, true), PTS_ERROR_NULL_ARGUMENT, NULL, "path");
  pts_container_t *empty = NULL;
  OK(pts_container_new(NULL, &empty));
  FAILS(pts_manager_save(m, empty, 1, NULL, &path), PTS_ERROR_NOT_INITIALIZED, NULL, "");
  pts_container_free(empty);
  pts_container_t *c = new_mlp();
  for (uint64_t step = 1; step <= 3; step++) {
    OK(pts_manager_save(m, c, step, NULL, &path));
    pts_string_free(path);
  }
  CHECK(checkpoint_files(dir, "checkpoint") == 3); /* no keep_* keeps everything */
  OK(pts_manager_list(m, &json));
  CHECK(json != NULL && strstr(json, "\"kept_by\":[\"all\"]") != NULL);
  pts_string_free(json);
  pts_container_free(c);
  OK(pts_manager_close(m));
  OK(pts_manager_close(NULL));
  pts_manager_free(NULL);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  snprintf(scratch_dir, sizeof scratch_dir, "%s", argv[1]);

  test_keep_last_list_latest_and_pins();
  test_keep_best();
  test_save_async_and_wait();
  test_restore_latest_bit_for_bit();
  test_fallback_past_a_truncated_newest();
  test_lock();
  test_argument_errors();

  printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
