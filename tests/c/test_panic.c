/*
 * A panic inside the library comes back as an error object with
 * PTS_ERROR_PANIC, and the process goes on: built against the
 * fault-injection variant of the library (`make c-test`).
 */
#include <stdio.h>
#include <string.h>

#include "pytorch_saver.h"

#ifndef PTS_FAULT_INJECTION
#error "build with -DPTS_FAULT_INJECTION against the fault-injection library"
#endif

int main(void) {
  int failures = 0;
  for (int i = 0; i < 3; i++) { /* and again: the boundary leaves nothing broken */
    pts_error_t *err = pts_fault_inject_panic();
    if (err == NULL || pts_error_code(err) != PTS_ERROR_PANIC ||
        strstr(pts_error_message(err), "panic provoked by pts_fault_inject_panic") == NULL) {
      fprintf(stderr, "expected a PTS_ERROR_PANIC error, got [%u] %s\n", pts_error_code(err),
              pts_error_message(err));
      failures++;
    }
    pts_error_free(err);
  }
  /* The library still works after the panics. */
  pts_registry_t *r = NULL;
  pts_error_t *err = pts_registry_new(&r);
  if (err != NULL || r == NULL) failures++;
  pts_error_free(err);
  pts_registry_free(r);
  printf("panic boundary: %s\n", failures == 0 ? "ok" : "FAILED");
  return failures == 0 ? 0 : 1;
}
