/*
 * The shared corpus of malformed files (tests/corpus, listed with the
 * refusal each must produce in manifest.json) through the C ABI:
 * pts_checkpoint_open must refuse every file, leaving its out-pointer
 * NULL, with the manifest's kind (pts_error_kind, the names of
 * docs/FORMAT.md section 9), a message (pts_error_message) containing the
 * manifest's substring, and code PTS_ERROR_UNSUPPORTED_VERSION for kind
 * UnsupportedVersion, PTS_ERROR_FORMAT for every other kind. The
 * directory's .zip files and the manifest's must be the same. Every
 * failure is reported, then the counts.
 *
 * Usage: test_corpus CORPUS_DIR
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases_json.h"
#include "pytorch_saver.h"

#define MAX_CASES 1024

typedef struct {
  char *file;
  char *kind;
  char *message;
} corpus_case;

/* Checks one case; returns the number of failures (0 or 1). */
static int check_case(const corpus_case *c, const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, c->file);
  pts_checkpoint_t *checkpoint = NULL;
  pts_error_t *err = pts_checkpoint_open(path, &checkpoint);
  if (err == NULL) {
    fprintf(stderr, "%s: opened, expected %s\n", c->file, c->kind);
    pts_checkpoint_free(checkpoint);
    return 1;
  }
  const char *kind = pts_error_kind(err);
  const char *message = pts_error_message(err);
  pts_error_code_t code = pts_error_code(err);
  bool version = strcmp(c->kind, "UnsupportedVersion") == 0;
  pts_error_code_t want = version ? PTS_ERROR_UNSUPPORTED_VERSION : PTS_ERROR_FORMAT;
  int failed = 0;
  if (strcmp(kind, c->kind) != 0 || strstr(message, c->message) == NULL || code != want) {
    fprintf(stderr, "%s: got %s [%u]: %s\n    expected %s [%u] containing \"%s\"\n", c->file, kind,
            code, message, c->kind, want, c->message);
    failed = 1;
  }
  if (checkpoint != NULL) {
    fprintf(stderr, "%s: the out-pointer was written on error\n", c->file);
    failed = 1;
  }
  pts_error_free(err);
  return failed;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Every .zip of `dir` must be listed; returns the number that are not, or
 * -1 if the directory cannot be read. */
static int count_unlisted(const char *dir, const corpus_case *cases, int n, int *zips) {
  DIR *d = opendir(dir);
  if (d == NULL) return -1;
  int unlisted = 0;
  *zips = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (!ends_with(e->d_name, ".zip")) continue;
    ++*zips;
    bool listed = false;
    for (int i = 0; i < n && !listed; i++) listed = strcmp(cases[i].file, e->d_name) == 0;
    if (!listed) {
      fprintf(stderr, "%s is in %s but not in manifest.json\n", e->d_name, dir);
      unlisted++;
    }
  }
  closedir(d);
  return unlisted;
}

static void free_cases(corpus_case *cases, int n) {
  for (int i = 0; i < n; i++) {
    free(cases[i].file);
    free(cases[i].kind);
    free(cases[i].message);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  char manifest_path[4096];
  snprintf(manifest_path, sizeof manifest_path, "%s/manifest.json", dir);
  char *text = cj_read_file(manifest_path);
  if (text == NULL) {
    fprintf(stderr, "cannot read %s\n", manifest_path);
    return 2;
  }
  static const char *items[MAX_CASES];
  static corpus_case cases[MAX_CASES];
  const char *list = cj_member(text, "cases");
  int n = list == NULL ? -1 : cj_elements(list, items, MAX_CASES);
  bool bad = n <= 0;
  if (bad) fprintf(stderr, "%s: no \"cases\" list of 1 to %d cases\n", manifest_path, MAX_CASES);
  int read = 0;
  while (!bad && read < n) {
    corpus_case *c = &cases[read++];
    c->file = cj_string_member(items[read - 1], "file");
    c->kind = cj_string_member(items[read - 1], "kind");
    c->message = cj_string_member(items[read - 1], "message");
    bad = c->file == NULL || c->kind == NULL || c->message == NULL || c->file[0] == '\0' ||
          c->kind[0] == '\0' || c->message[0] == '\0';
    if (bad)
      fprintf(stderr, "%s: case %d lacks a file, kind or message string\n", manifest_path,
              read - 1);
  }
  free(text);
  if (bad) {
    free_cases(cases, read);
    return 2;
  }

  int failed = 0;
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < i; j++) {
      if (strcmp(cases[i].file, cases[j].file) == 0) {
        fprintf(stderr, "%s is listed twice\n", cases[i].file);
        failed++;
      }
    }
    failed += check_case(&cases[i], dir);
  }
  int zips = 0;
  int unlisted = count_unlisted(dir, cases, n, &zips);
  if (unlisted < 0) {
    fprintf(stderr, "cannot list %s\n", dir);
    failed++;
  } else if (zips != n + unlisted) {
    fprintf(stderr, "manifest.json lists %d files, %s holds %d of them\n", n, dir, zips - unlisted);
    failed++;
  }
  failed += unlisted > 0 ? unlisted : 0;
  free_cases(cases, n);
  printf("corpus: %d cases, %d failed\n", n, failed);
  return failed == 0 ? 0 : 1;
}
