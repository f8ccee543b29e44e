/*
 * The check counters and macros the C test programs share: CHECK(cond)
 * counts a check and reports a false condition; OK(call) counts a call
 * that must return no error and reports (and frees) the one it returns.
 * Each program prints `checks` and `failures` at the end and exits
 * non-zero when any check failed.
 */
#ifndef PTS_TESTS_C_CHECKS_H
#define PTS_TESTS_C_CHECKS_H

#include <stdio.h>

#include "pytorch_saver.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    checks++;                                                                  \
    if (!(cond)) {                                                             \
      failures++;                                                              \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

/* A call that must succeed. */
#define OK(call)                                                                \
  do {                                                                          \
    pts_error_t *err_ = (call);                                                 \
    checks++;                                                                   \
    if (err_ != NULL) {                                                         \
      failures++;                                                               \
      fprintf(stderr, "%s:%d: %s failed: [%u] %s\n", __FILE__, __LINE__, #call, \
              pts_error_code(err_), pts_error_message(err_));                   \
      pts_error_free(err_);                                                     \
    }                                                                           \
  } while (0)

#endif
