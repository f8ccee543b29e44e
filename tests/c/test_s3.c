/*
 * Checkpoints at object-store URLs from plain C99 (docs/C_API.md "URLs"),
 * against a real S3 API server: moto's, on a loopback port, started here
 * through tests/s3/moto_server.py and stopped at the end. A container
 * saved to s3:// comes back from its URL with the same outputs bit for
 * bit; a missing bucket, an unknown scheme and an endpoint nothing listens
 * on are each PTS_ERROR_STORAGE (kind "Storage") naming the URL. Built and
 * run under AddressSanitizer (leaks included) and UBSan by `make c-test`.
 *
 * Usage: test_s3 PYTHON MOTO_SERVER_PY (the venv's python and
 * tests/s3/moto_server.py).
 */
#define _POSIX_C_SOURCE 200809L /* popen, fileno, setenv under -std=c99 */

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "checks.h"
#include "pytorch_saver.h"

#define BUCKET "pts-tests"

/* A call that must fail with PTS_ERROR_STORAGE, kind "Storage", and a
 * message naming `url`. */
#define STORAGE_ERROR(call, url) expect_storage_error((call), (url), #call, __LINE__)

static void expect_storage_error(pts_error_t *err, const char *url, const char *what, int line) {
  checks++;
  if (err == NULL) {
    failures++;
    fprintf(stderr, "%s:%d: %s succeeded, expected a storage error\n", __FILE__, line, what);
    return;
  }
  const char *message = pts_error_message(err);
  if (pts_error_code(err) != PTS_ERROR_STORAGE || strcmp(pts_error_kind(err), "Storage") != 0 ||
      strstr(message, url) == NULL) {
    failures++;
    fprintf(stderr, "%s:%d: %s: got [%u, %s] %s; expected [%u, Storage] naming \"%s\"\n", __FILE__,
            line, what, pts_error_code(err), pts_error_kind(err), message, PTS_ERROR_STORAGE, url);
  }
  pts_error_free(err);
}

/* The running server: its stdout (popen's stream) and the write end of
 * its stdin; the server ends when that closes. */
typedef struct {
  FILE *out;
  int stdin_fd;
  char endpoint[256];
} moto_t;

/* Starts moto_server.py with the bucket BUCKET and reads its endpoint.
 * popen gives only one direction, so the server's stdin is a pipe of our
 * own, handed to the shell as fd `in`; our write end is close-on-exec so
 * that the server's copy of the pipe is its only reader. */
static bool moto_start(moto_t *m, const char *python, const char *script) {
  int fds[2];
  if (pipe(fds) != 0) return false;
  if (fcntl(fds[1], F_SETFD, FD_CLOEXEC) != 0) return false;
  char command[4096];
  snprintf(command, sizeof command, "exec '%s' '%s' --bucket %s <&%d %d<&-", python, script, BUCKET,
           fds[0], fds[0]);
  m->out = popen(command, "r");
  close(fds[0]);
  m->stdin_fd = fds[1];
  if (m->out == NULL) return false;
  char line[512];
  if (fgets(line, sizeof line, m->out) == NULL) return false;
  /* {"endpoint": "http://127.0.0.1:PORT"} */
  const char *start = strstr(line, "http://");
  const char *end = start == NULL ? NULL : strchr(start, '"');
  if (end == NULL || (size_t)(end - start) >= sizeof m->endpoint) return false;
  memcpy(m->endpoint, start, (size_t)(end - start));
  m->endpoint[end - start] = '\0';
  return true;
}

/* Closes the server's stdin and waits for it to exit. */
static int moto_stop(moto_t *m) {
  close(m->stdin_fd);
  return m->out == NULL ? -1 : pclose(m->out);
}

/* The standard AWS variables that point every client at `endpoint`
 * (moto_server.py's client_env). */
static void point_clients_at(const char *endpoint) {
  setenv("AWS_ENDPOINT_URL", endpoint, 1);
  setenv("AWS_ALLOW_HTTP", "true", 1);
  setenv("AWS_ACCESS_KEY_ID", "testing", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "testing", 1);
  setenv("AWS_REGION", "us-east-1", 1);
  setenv("AWS_DEFAULT_REGION", "us-east-1", 1);
}

/* A loopback endpoint nothing listens on: a port bound, then released. */
static bool closed_endpoint(char *out, size_t len) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return false;
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof addr;
  bool ok = bind(s, (struct sockaddr *)&addr, sizeof addr) == 0 &&
            getsockname(s, (struct sockaddr *)&addr, &size) == 0;
  close(s);
  if (ok) snprintf(out, len, "http://127.0.0.1:%u", (unsigned)ntohs(addr.sin_port));
  return ok;
}

/* The model's output on a fixed 2 x 4 input, as bytes; NULL on failure. */
static unsigned char *output_of(const pts_container_t *c, size_t *len) {
  static const float input[8] = {0.5f, -1.0f, 2.0f, 0.25f, -0.75f, 1.5f, 0.0f, 3.0f};
  const int64_t shape[2] = {2, 4};
  pts_tensor_t *x = NULL, *y = NULL;
  unsigned char *bytes = NULL;
  *len = 0;
  OK(pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 2, input, sizeof input, &x));
  OK(pts_container_forward(c, x, false, &y));
  if (y != NULL) {
    OK(pts_tensor_nbytes(y, len));
    bytes = malloc(*len);
    OK(pts_tensor_copy_to_buffer(y, bytes, *len));
  }
  pts_tensor_free(x);
  pts_tensor_free(y);
  return bytes;
}

static bool starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Save to s3://, load from the URL save returned: the same outputs. */
static void test_container_round_trips_through_s3(void) {
  pts_container_t *c = NULL;
  OK(pts_container_new(NULL, &c));
  OK(pts_container_initialize(c, "pytorch_saver.models.MLP",
                              "{\"in_dim\": 4, \"hidden_dim\": 8, \"n_classes\": 3}",
                              "torch.optim.Adam", "{\"lr\": 0.01}", NULL, NULL));
  char *url = NULL;
  OK(pts_container_save(c, "s3://" BUCKET "/c", "run", "{\"epoch\": 3}", &url));
  CHECK(url != NULL);
  if (url == NULL) {
    pts_container_free(c);
    return;
  }
  CHECK(starts_with(url, "s3://" BUCKET "/c/run_checkpoint_"));
  CHECK(ends_with(url, ".zip"));

  /* The object is a checkpoint any reader opens. */
  pts_checkpoint_t *ckpt = NULL;
  OK(pts_checkpoint_open(url, &ckpt));
  const char *metadata = NULL;
  if (ckpt != NULL) OK(pts_checkpoint_metadata(ckpt, &metadata));
  CHECK(metadata != NULL && strstr(metadata, "\"epoch\":3") != NULL);
  pts_checkpoint_free(ckpt);

  pts_container_t *loaded = NULL;
  char *meta = NULL;
  OK(pts_container_load(NULL, url, &loaded, &meta));
  if (loaded != NULL) {
    CHECK(meta != NULL && strstr(meta, "\"epoch\":3") != NULL);
    size_t na = 0, nb = 0;
    unsigned char *a = output_of(c, &na);
    unsigned char *b = output_of(loaded, &nb);
    CHECK(a != NULL && b != NULL && na == 2 * 3 * sizeof(float) && na == nb);
    CHECK(a != NULL && b != NULL && na == nb && memcmp(a, b, na) == 0);
    free(a);
    free(b);
    double lr = 0;
    OK(pts_container_lr(loaded, 0, &lr));
    CHECK(lr == 0.01);
  }
  pts_string_free(meta);
  pts_container_free(loaded);
  pts_string_free(url);
  pts_container_free(c);
}

/* Each failure is PTS_ERROR_STORAGE naming the URL, not a hang. */
static void test_storage_errors_name_the_url(const char *endpoint) {
  pts_container_t *c = NULL;
  char *meta = NULL;
  const char *missing = "s3://no-such-bucket-xyz/k.zip";
  STORAGE_ERROR(pts_container_load(NULL, missing, &c, &meta), missing);
  pts_checkpoint_t *ckpt = NULL;
  STORAGE_ERROR(pts_checkpoint_open(missing, &ckpt), missing);

  const char *unknown = "foo://a/b.zip";
  STORAGE_ERROR(pts_container_load(NULL, unknown, &c, &meta), unknown);

  /* A missing object in a bucket that exists. */
  const char *absent = "s3://" BUCKET "/c/absent.zip";
  pts_error_t *err = pts_container_load(NULL, absent, &c, &meta);
  CHECK(err != NULL && strstr(pts_error_message(err), absent) != NULL);
  pts_error_free(err);

  /* Saving into a missing bucket. */
  pts_container_t *model = NULL;
  OK(pts_container_new(NULL, &model));
  OK(pts_container_initialize(model, "pytorch_saver.models.MLP",
                              "{\"in_dim\": 4, \"hidden_dim\": 8, \"n_classes\": 3}", NULL, NULL,
                              NULL, NULL));
  char *url = NULL;
  STORAGE_ERROR(pts_container_save(model, "s3://no-such-bucket-xyz/c", "run", NULL, &url),
                "s3://no-such-bucket-xyz/c");
  CHECK(url == NULL);

  /* An endpoint nothing listens on: the bounded retries give up. */
  char dead[64];
  CHECK(closed_endpoint(dead, sizeof dead));
  setenv("AWS_ENDPOINT_URL", dead, 1);
  const char *unreachable = "s3://" BUCKET "/c/k.zip";
  STORAGE_ERROR(pts_container_load(NULL, unreachable, &c, &meta), unreachable);
  STORAGE_ERROR(pts_container_save(model, "s3://" BUCKET "/c", "dead", NULL, &url),
                "s3://" BUCKET "/c");
  setenv("AWS_ENDPOINT_URL", endpoint, 1);
  CHECK(c == NULL && meta == NULL && ckpt == NULL && url == NULL);
  pts_container_free(model);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s PYTHON MOTO_SERVER_PY\n", argv[0]);
    return 2;
  }
  moto_t moto = {NULL, -1, ""};
  if (!moto_start(&moto, argv[1], argv[2])) {
    fprintf(stderr, "could not start %s %s\n", argv[1], argv[2]);
    moto_stop(&moto);
    return 1;
  }
  point_clients_at(moto.endpoint);

  test_container_round_trips_through_s3();
  test_storage_errors_name_the_url(moto.endpoint);

  CHECK(moto_stop(&moto) == 0);
  printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
