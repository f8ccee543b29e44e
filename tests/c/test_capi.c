/*
 * Tests of the C ABI from plain C99 (no C++ in this program): checkpoints,
 * containers of the built-in MLP, a model registered from C, load options,
 * inference models served from several threads, and every error path at
 * the boundary. Built and run under AddressSanitizer (leaks included) and
 * UBSan, then under valgrind, by `make c-test`.
 *
 * Usage: test_capi GOLDEN_DIR SCRATCH_DIR (GOLDEN_DIR is tests/golden/v1; the
 * version 2 files are read from its sibling v2).
 */
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c99 */

#include <dirent.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases_json.h"
#include "checks.h"
#include "pytorch_saver.h"

/* A call that must fail with `code` and a message containing `needle`. */
#define FAILS(call, code, needle) expect_error((call), (code), (needle), #call, __LINE__)

static void expect_error(pts_error_t *err, pts_error_code_t code, const char *needle,
                         const char *what, int line) {
  checks++;
  if (err == NULL) {
    failures++;
    fprintf(stderr, "%s:%d: %s succeeded, expected error %u\n", __FILE__, line, what, code);
    return;
  }
  const char *message = pts_error_message(err);
  if (pts_error_code(err) != code || strstr(message, needle) == NULL) {
    failures++;
    fprintf(stderr, "%s:%d: %s: got [%u] %s; expected [%u] containing \"%s\"\n", __FILE__, line,
            what, pts_error_code(err), message, code, needle);
  }
  pts_error_free(err);
}

static char golden_dir[1024];
static char scratch_dir[1024];

static const char *golden(const char *name) {
  static char path[2048];
  snprintf(path, sizeof path, "%s/%s", golden_dir, name);
  return path;
}

static const char *scratch(const char *name) {
  static char path[2048];
  snprintf(path, sizeof path, "%s/%s", scratch_dir, name);
  return path;
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)size + 1);
  if (buf != NULL && fread(buf, 1, (size_t)size, f) != (size_t)size) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  if (buf != NULL) {
    buf[size] = '\0';
    *len = (size_t)size;
  }
  return buf;
}

static int write_file(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) return 0;
  size_t n = fwrite(data, 1, len, f);
  return fclose(f) == 0 && n == len;
}

/* The numbers of the JSON array after `"key": [` inside `text`, as floats
 * (the sidecar prints f32 values exactly). Returns the count read. */
static size_t json_floats(const char *text, const char *key, float *out, size_t cap) {
  char pattern[64];
  snprintf(pattern, sizeof pattern, "\"%s\": [", key);
  const char *p = strstr(text, pattern);
  if (p == NULL) return 0;
  p += strlen(pattern);
  size_t n = 0;
  while (*p != ']' && n < cap) {
    char *end;
    out[n++] = (float)strtod(p, &end);
    p = end;
    while (*p == ',' || *p == ' ' || *p == '\n') p++;
  }
  return n;
}

/* ---- checkpoints ------------------------------------------------------ */

static void test_version(void) {
  CHECK(strcmp(pts_version(), PTS_VERSION) == 0);
  CHECK(PTS_FORMAT_VERSION == 2);
}

static void test_checkpoint_reading(void) {
  pts_checkpoint_t *ckpt = NULL;
  OK(pts_checkpoint_open(golden("rust_all_dtypes_inference.zip"), &ckpt));
  if (ckpt == NULL) return;

  const char *meta = NULL;
  OK(pts_checkpoint_metadata(ckpt, &meta));
  CHECK(meta != NULL && strstr(meta, "\"class\":\"tests.AllDtypes\"") != NULL);

  size_t count = 0, optimizer_count = 99;
  OK(pts_checkpoint_tensor_count(ckpt, PTS_MEMBER_MODEL, &count));
  OK(pts_checkpoint_tensor_count(ckpt, PTS_MEMBER_OPTIMIZER, &optimizer_count));
  CHECK(count == 30); /* ten dtypes: matrix, scalar, empty */
  CHECK(optimizer_count == 0);

  int seen_scalar = 0, seen_empty = 0;
  for (size_t i = 0; i < count; i++) {
    const char *name = NULL;
    OK(pts_checkpoint_tensor_name(ckpt, PTS_MEMBER_MODEL, i, &name));
    if (name == NULL) continue;
    pts_dtype_t dtype = 0;
    const int64_t *shape = NULL;
    size_t ndim = 0, nbytes = 0;
    OK(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_MODEL, name, &dtype, &shape, &ndim, &nbytes));
    CHECK(dtype >= PTS_DTYPE_F64 && dtype <= PTS_DTYPE_BOOL);
    if (strstr(name, ".scalar") != NULL) {
      seen_scalar++;
      CHECK(ndim == 0);
    }
    if (strstr(name, ".empty") != NULL) {
      seen_empty++;
      CHECK(ndim == 2 && shape[0] == 0 && shape[1] == 4 && nbytes == 0);
    }
    if (strcmp(name, "f32.matrix") == 0) {
      CHECK(dtype == PTS_DTYPE_F32 && ndim == 2 && shape[0] == 2 && shape[1] == 3);
      CHECK(nbytes == 24);
    }

    /* Copy and borrow agree, and a tensor handle holds the same bytes. */
    unsigned char *copy = malloc(nbytes + 1);
    const uint8_t *borrowed = NULL;
    size_t borrowed_len = 1;
    OK(pts_checkpoint_tensor_read(ckpt, PTS_MEMBER_MODEL, name, copy, nbytes));
    OK(pts_checkpoint_tensor_borrow(ckpt, PTS_MEMBER_MODEL, name, &borrowed, &borrowed_len));
    CHECK(borrowed_len == nbytes && (nbytes == 0 || memcmp(copy, borrowed, nbytes) == 0));

    pts_tensor_t *t = NULL;
    OK(pts_checkpoint_tensor(ckpt, PTS_MEMBER_MODEL, name, &t));
    size_t t_bytes = 1, t_ndim = 9;
    pts_dtype_t t_dtype = 0;
    OK(pts_tensor_nbytes(t, &t_bytes));
    OK(pts_tensor_ndim(t, &t_ndim));
    OK(pts_tensor_dtype(t, &t_dtype));
    CHECK(t_bytes == nbytes && t_ndim == ndim && t_dtype == dtype);
    unsigned char *back = malloc(nbytes + 1);
    OK(pts_tensor_copy_to_buffer(t, back, nbytes));
    CHECK(nbytes == 0 || memcmp(copy, back, nbytes) == 0);
    pts_tensor_free(t);
    free(back);
    free(copy);
  }
  CHECK(seen_scalar == 10 && seen_empty == 10);

  /* Errors on a good handle. */
  const char *name = NULL;
  FAILS(pts_checkpoint_tensor_name(ckpt, PTS_MEMBER_MODEL, count, &name),
        PTS_ERROR_INVALID_ARGUMENT, "past the 30 tensors");
  FAILS(pts_checkpoint_tensor_count(ckpt, 7, &count), PTS_ERROR_INVALID_ARGUMENT,
        "unknown member code 7 (PTS_MEMBER_MODEL, PTS_MEMBER_OPTIMIZER or PTS_MEMBER_EXTRA)");
  /* A file without extra state: an empty extra member. */
  size_t extra_count = 99;
  OK(pts_checkpoint_tensor_count(ckpt, PTS_MEMBER_EXTRA, &extra_count));
  CHECK(extra_count == 0);

  char buf[8];
  FAILS(pts_checkpoint_tensor_read(ckpt, PTS_MEMBER_MODEL, "no.such", buf, sizeof buf),
        PTS_ERROR_NOT_FOUND, "no.such");
  FAILS(pts_checkpoint_tensor_read(ckpt, PTS_MEMBER_MODEL, "f32.matrix", buf, sizeof buf),
        PTS_ERROR_INVALID_ARGUMENT, "has 24 bytes, the buffer 8");
  FAILS(pts_checkpoint_tensor_read(ckpt, PTS_MEMBER_EXTRA, "rng.torch.cpu", buf, sizeof buf),
        PTS_ERROR_NOT_FOUND, "rng.torch.cpu");
  pts_checkpoint_free(ckpt);
}

/* ---- format version 2 -------------------------------------------------- */

/* A golden file of tests/golden/v2, the sibling of GOLDEN_DIR (v1). */
static const char *golden_v2(const char *name) {
  static char path[2048];
  snprintf(path, sizeof path, "%s/../v2/%s", golden_dir, name);
  return path;
}

/* Whether the string member `key` of the object at `object` is `want`. */
static bool string_member_is(const char *object, const char *key, const char *want) {
  char *s = object == NULL ? NULL : cj_string_member(object, key);
  bool same = s != NULL && strcmp(s, want) == 0;
  free(s);
  return same;
}

/* Checks the extra tensor that the extra entry `entry`'s tag
 * state.torch.cpu names (a pytorch_saver.RNG's CPU generator state, uint8)
 * against the sidecar: dtype, shape and bytes, copied and borrowed. */
static void check_rng_cpu_tensor(pts_checkpoint_t *ckpt, const char *entry, const char *sidecar) {
  const char *state = entry == NULL ? NULL : cj_member(entry, "state");
  const char *torch = state == NULL ? NULL : cj_member(state, "torch");
  const char *cpu = torch == NULL ? NULL : cj_member(torch, "cpu");
  CHECK(cpu != NULL && string_member_is(cpu, "__type__", "tensor"));
  char *name = cpu == NULL ? NULL : cj_string_member(cpu, "name");
  CHECK(name != NULL);
  if (name == NULL) return;

  size_t count = 0, found = 0;
  OK(pts_checkpoint_tensor_count(ckpt, PTS_MEMBER_EXTRA, &count));
  for (size_t i = 0; i < count; i++) {
    const char *listed = NULL;
    OK(pts_checkpoint_tensor_name(ckpt, PTS_MEMBER_EXTRA, i, &listed));
    found += listed != NULL && strcmp(listed, name) == 0;
  }
  CHECK(found == 1);

  pts_dtype_t dtype = 0;
  const int64_t *shape = NULL;
  size_t ndim = 0, nbytes = 0;
  OK(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_EXTRA, name, &dtype, &shape, &ndim, &nbytes));
  CHECK(dtype == PTS_DTYPE_U8 && ndim == 1 && nbytes > 0 && shape != NULL &&
        (size_t)shape[0] == nbytes);

  /* The sidecar's record of the tensor: tensors["extra.safetensors"][name]. */
  const char *tensors = cj_member(sidecar, "tensors");
  const char *member = tensors == NULL ? NULL : cj_member(tensors, "extra.safetensors");
  const char *record = member == NULL ? NULL : cj_member(member, name);
  char *hex = record == NULL ? NULL : cj_string_member(record, "hex");
  CHECK(record != NULL && string_member_is(record, "dtype", "U8"));
  CHECK(hex != NULL && strlen(hex) == 2 * nbytes);
  unsigned char *bytes = malloc(nbytes);
  const uint8_t *borrowed = NULL;
  size_t borrowed_len = 0;
  OK(pts_checkpoint_tensor_read(ckpt, PTS_MEMBER_EXTRA, name, bytes, nbytes));
  OK(pts_checkpoint_tensor_borrow(ckpt, PTS_MEMBER_EXTRA, name, &borrowed, &borrowed_len));
  CHECK(borrowed_len == nbytes && memcmp(bytes, borrowed, nbytes) == 0);
  if (hex != NULL && strlen(hex) == 2 * nbytes) {
    size_t differ = 0;
    for (size_t i = 0; i < nbytes; i++) {
      char two[3] = {hex[2 * i], hex[2 * i + 1], '\0'};
      differ += (unsigned long)bytes[i] != strtoul(two, NULL, 16);
    }
    CHECK(differ == 0);
  }
  pts_tensor_t *t = NULL;
  size_t t_bytes = 0;
  OK(pts_checkpoint_tensor(ckpt, PTS_MEMBER_EXTRA, name, &t));
  OK(pts_tensor_nbytes(t, &t_bytes));
  CHECK(t_bytes == nbytes);
  pts_tensor_free(t);
  free(bytes);
  free(hex);
  free(name);
}

/* Opens a version 2 golden file; NULL (a failed check naming the file)
 * when it or its sidecar is missing. `*sidecar` is the sidecar's text. */
static pts_checkpoint_t *open_v2_golden(const char *name, char **sidecar, const char **meta) {
  char sidecar_path[2100];
  snprintf(sidecar_path, sizeof sidecar_path, "%s.json", golden_v2(name));
  *sidecar = cj_read_file(sidecar_path);
  if (*sidecar == NULL) {
    fprintf(stderr, "version 2 golden file %s (and its sidecar) is missing\n", golden_v2(name));
    CHECK(*sidecar != NULL);
    return NULL;
  }
  pts_checkpoint_t *ckpt = NULL;
  OK(pts_checkpoint_open(golden_v2(name), &ckpt));
  if (ckpt != NULL) OK(pts_checkpoint_metadata(ckpt, meta));
  return ckpt;
}

/* The Python package's version 2 file: the metadata JSON carries the
 * typed kwargs' tags (a dtype, Adam's betas as a tuple) and the extra
 * state, whose RNG tensor reads from PTS_MEMBER_EXTRA with the sidecar's
 * bytes. */
static void test_golden_v2_typed_kwargs_and_extra(void) {
  char *sidecar = NULL;
  const char *meta = NULL;
  pts_checkpoint_t *ckpt = open_v2_golden("python_v2_typed_extra_checkpoint.zip", &sidecar, &meta);
  if (ckpt == NULL || meta == NULL) {
    free(sidecar);
    pts_checkpoint_free(ckpt);
    return;
  }
  const char *internals = cj_member(meta, "__pytorch_saver__");
  const char *version = internals == NULL ? NULL : cj_member(internals, "format_version");
  CHECK(version != NULL && strtol(version, NULL, 10) == 2);

  const char *model_kwargs = cj_member(meta, "model_kwargs");
  const char *dtype = model_kwargs == NULL ? NULL : cj_member(model_kwargs, "dtype");
  CHECK(string_member_is(dtype, "__type__", "dtype") && string_member_is(dtype, "name", "float64"));

  const char *optim_kwargs = cj_member(meta, "optim_kwargs");
  const char *betas = optim_kwargs == NULL ? NULL : cj_member(optim_kwargs, "betas");
  CHECK(string_member_is(betas, "__type__", "tuple"));
  const char *items[4];
  const char *list = betas == NULL ? NULL : cj_member(betas, "items");
  int n = list == NULL ? -1 : cj_elements(list, items, 4);
  CHECK(n == 2 && strtod(items[0], NULL) == 0.9 && strtod(items[1], NULL) == 0.99);

  const char *extra = internals == NULL ? NULL : cj_member(internals, "extra");
  const char *rng = extra == NULL ? NULL : cj_member(extra, "rng");
  CHECK(string_member_is(rng, "class", "pytorch_saver.RNG"));
  CHECK(extra != NULL &&
        string_member_is(cj_member(extra, "scaler"), "class", "torch.amp.GradScaler") &&
        string_member_is(cj_member(extra, "counters"), "class", "pytorch_saver.Counters"));
  check_rng_cpu_tensor(ckpt, rng, sidecar);
  pts_checkpoint_free(ckpt);
  free(sidecar);
}

/* The Rust writer's version 2 MLP checkpoint: its RNG tensor, likewise. */
static void test_golden_v2_rust_extra(void) {
  char *sidecar = NULL;
  const char *meta = NULL;
  pts_checkpoint_t *ckpt = open_v2_golden("rust_v2_mlp_extra_checkpoint.zip", &sidecar, &meta);
  if (ckpt != NULL && meta != NULL) {
    const char *internals = cj_member(meta, "__pytorch_saver__");
    const char *extra = internals == NULL ? NULL : cj_member(internals, "extra");
    const char *rng = extra == NULL ? NULL : cj_member(extra, "rng");
    CHECK(string_member_is(rng, "class", "pytorch_saver.RNG"));
    check_rng_cpu_tensor(ckpt, rng, sidecar);
  }
  pts_checkpoint_free(ckpt);
  free(sidecar);
}

/* Python's LambdaLR checkpoint: its lr_lambda is a callable tag, which only
 * Python can fill in. The file reads; loading it into a container is
 * refused, naming the class, and yields no container. Python's NAdam +
 * SequentialLR checkpoint, whose children are spec tags, loads whole with
 * the learning rate the file's optimizer section records. */
static void test_golden_v2_schedulers(void) {
  char *sidecar = NULL;
  const char *meta = NULL;
  pts_checkpoint_t *ckpt =
      open_v2_golden("python_v2_mlp_adam_lambda_checkpoint.zip", &sidecar, &meta);
  CHECK(ckpt != NULL);
  pts_checkpoint_free(ckpt);
  free(sidecar);
  pts_container_t *c = NULL;
  char *flat = NULL;
  FAILS(pts_container_load(NULL, golden_v2("python_v2_mlp_adam_lambda_checkpoint.zip"), &c, &flat),
        PTS_ERROR_UNSUPPORTED_CLASS, "torch.optim.lr_scheduler.LambdaLR");
  CHECK(c == NULL && flat == NULL);

  OK(pts_container_load(NULL, golden_v2("python_v2_mlp_nadam_sequential_checkpoint.zip"), &c,
                        &flat));
  double lr = 0.0;
  OK(pts_container_lr(c, 0, &lr));
  CHECK(lr == 0.008145033635316127);
  pts_string_free(flat);
  pts_container_free(c);
}

static void test_bad_files(void) {
  pts_checkpoint_t *ckpt = NULL;
  pts_container_t *c = NULL;
  char *meta = NULL;
  FAILS(pts_checkpoint_open(scratch("does_not_exist.zip"), &ckpt), PTS_ERROR_IO,
        "does_not_exist.zip");
  FAILS(pts_container_load(NULL, scratch("does_not_exist.zip"), &c, &meta), PTS_ERROR_IO,
        "does_not_exist.zip");

  size_t len = 0;
  char *bytes = read_file(golden("rust_mlp_inference.zip"), &len);
  CHECK(bytes != NULL);
  if (bytes == NULL) return;
  CHECK(write_file(scratch("truncated.zip"), bytes, len / 2));
  FAILS(pts_checkpoint_open(scratch("truncated.zip"), &ckpt), PTS_ERROR_FORMAT, "end");
  FAILS(pts_container_load(NULL, scratch("truncated.zip"), &c, &meta), PTS_ERROR_FORMAT, "end");

  /* One flipped byte inside the model member: the CRC names the member. */
  bytes[len / 2] ^= 0x55;
  CHECK(write_file(scratch("flipped.zip"), bytes, len));
  FAILS(pts_checkpoint_open(scratch("flipped.zip"), &ckpt), PTS_ERROR_FORMAT, "CRC-32 mismatch");

  CHECK(write_file(scratch("garbage.zip"), "definitely not a zip archive, just text", 40));
  FAILS(pts_checkpoint_open(scratch("garbage.zip"), &ckpt), PTS_ERROR_FORMAT, "");
  free(bytes);
  CHECK(ckpt == NULL && c == NULL && meta == NULL); /* untouched on error */
}

/* ---- containers -------------------------------------------------------- */

/* A forward function that no model uses, to ask for an instance by. */
static pts_error_t *dummy_forward(void *instance, const pts_tensor_t *input, bool train,
                                  pts_tensor_t **output) {
  (void)instance, (void)input, (void)train, (void)output;
  return pts_error_new(0, "never called");
}

static void test_mlp_forward_matches_rust(void) {
  size_t len = 0;
  char *sidecar = read_file(golden("rust_mlp_inference.zip.json"), &len);
  CHECK(sidecar != NULL);
  if (sidecar == NULL) return;
  float input[8], expected[6];
  CHECK(json_floats(sidecar, "input", input, 8) == 8);
  CHECK(json_floats(sidecar, "output", expected, 6) == 6);
  free(sidecar);

  pts_container_t *c = NULL;
  char *meta = NULL;
  OK(pts_container_load(NULL, golden("rust_mlp_inference.zip"), &c, &meta));
  if (c == NULL) return;
  CHECK(strstr(meta, "\"hidden_dim\":8") != NULL);
  pts_string_free(meta);

  int64_t shape[2] = {2, 4};
  pts_tensor_t *x = NULL, *y = NULL;
  OK(pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 2, input, sizeof input, &x));
  OK(pts_container_forward(c, x, false, &y));
  float out[6] = {0};
  int64_t out_shape[2] = {0, 0};
  OK(pts_tensor_shape(y, out_shape, 2));
  CHECK(out_shape[0] == 2 && out_shape[1] == 3);
  OK(pts_tensor_copy_to_buffer(y, out, sizeof out));
  CHECK(memcmp(out, expected, sizeof out) == 0); /* bit for bit what Rust computed */

  /* A wrong input shape is a libtorch error, not a crash. */
  int64_t bad_shape[2] = {4, 2};
  pts_tensor_t *bad = NULL, *none = NULL;
  OK(pts_tensor_from_buffer(PTS_DTYPE_F32, bad_shape, 2, input, sizeof input, &bad));
  FAILS(pts_container_forward(c, bad, false, &none), PTS_ERROR_TORCH,
        "shapes cannot be multiplied (4x2 and 4x8)");
  CHECK(none == NULL);
  /* The message says what went wrong, without libtorch's C++ backtrace. */
  pts_error_t *torch_error = pts_container_forward(c, bad, false, &none);
  CHECK(torch_error != NULL &&
        strstr(pts_error_message(torch_error), "Exception raised from") == NULL);
  pts_error_free(torch_error);
  pts_tensor_free(bad);
  pts_tensor_free(x);
  pts_tensor_free(y);
  pts_container_free(c);
}

/* Whether the file at `path` records `language` as its producer's. */
static bool producer_language_is(const char *path, const char *language) {
  pts_checkpoint_t *ckpt = NULL;
  const char *meta = NULL;
  char needle[64];
  snprintf(needle, sizeof needle, "\"language\":\"%s\"", language);
  pts_error_t *err = pts_checkpoint_open(path, &ckpt);
  if (err == NULL) err = pts_checkpoint_metadata(ckpt, &meta);
  bool found = err == NULL && strstr(meta, needle) != NULL;
  pts_error_free(err);
  pts_checkpoint_free(ckpt);
  return found;
}

static void test_container_life_cycle(void) {
  pts_container_t *c = NULL;
  OK(pts_container_new(NULL, &c));
  if (c == NULL) return;
  FAILS(pts_container_step(c), PTS_ERROR_NOT_INITIALIZED, "initialize or load");
  size_t n = 0;
  FAILS(pts_container_parameter_count(c, &n), PTS_ERROR_NOT_INITIALIZED, "initialize or load");
  char *path = NULL;
  FAILS(pts_container_save(c, scratch_dir, "x", NULL, &path), PTS_ERROR_NOT_INITIALIZED, "");

  OK(pts_container_initialize(
      c, "pytorch_saver.models.MLP", "{\"in_dim\": 4, \"hidden_dim\": 8, \"n_classes\": 3}",
      "torch.optim.Adam", "{\"lr\": 0.01}", "torch.optim.lr_scheduler.StepLR",
      "{\"step_size\": 2, \"gamma\": 0.5}"));
  OK(pts_container_parameter_count(c, &n));
  CHECK(n == 8);
  const char *name = NULL;
  pts_tensor_t *w = NULL;
  OK(pts_container_parameter(c, 0, &name, &w));
  CHECK(name != NULL && strcmp(name, "fc1.weight") == 0);
  pts_tensor_free(w);

  double lr = 0;
  size_t groups = 0;
  OK(pts_container_param_group_count(c, &groups));
  CHECK(groups == 1);
  OK(pts_container_zero_grad(c));
  OK(pts_container_step(c)); /* no gradients yet: a no-op, as in PyTorch */
  OK(pts_container_scheduler_step(c));
  OK(pts_container_scheduler_step(c));
  OK(pts_container_lr(c, 0, &lr));
  CHECK(lr == 0.005);
  FAILS(pts_container_lr(c, 1, &lr), PTS_ERROR_INVALID_ARGUMENT, "past the optimizer's 1 groups");
  FAILS(pts_container_scheduler_step_metric(c, 1.0), PTS_ERROR_USAGE, "");

  FAILS(pts_container_save(c, scratch_dir, "c_test", "{\"timestamp\": 1}", &path),
        PTS_ERROR_INVALID_METADATA, "reserved");
  FAILS(pts_container_save(c, scratch_dir, "c_test", "[1, 2]", &path), PTS_ERROR_INVALID_JSON,
        "JSON object");
  OK(pts_container_save(c, scratch_dir, "c_test", "{\"epoch\": 2, \"loss\": 0.5}", &path));
  CHECK(path != NULL && strstr(path, "c_test_checkpoint_") != NULL);
  /* C is the producer's language of what C saves; a binding names its own. */
  CHECK(producer_language_is(path, "c"));
  FAILS(pts_container_set_producer_language(c, ""), PTS_ERROR_USAGE, "1 to 32 printable ASCII");
  FAILS(pts_container_set_producer_language(c, "objective c"), PTS_ERROR_USAGE, "printable");
  OK(pts_container_set_producer_language(c, "julia"));
  char *julia = NULL;
  OK(pts_container_save_inference(c, scratch_dir, "julia", NULL, &julia));
  CHECK(julia != NULL && producer_language_is(julia, "julia"));
  pts_string_free(julia);

  pts_container_t *loaded = NULL;
  char *meta = NULL;
  OK(pts_container_load(NULL, path, &loaded, &meta));
  if (loaded != NULL) {
    CHECK(strstr(meta, "\"epoch\":2") != NULL && strstr(meta, "\"step_size\":2") != NULL);
    OK(pts_container_lr(loaded, 0, &lr));
    CHECK(lr == 0.005);
    /* Every parameter came back bit for bit. */
    size_t count = 0;
    OK(pts_container_parameter_count(loaded, &count));
    for (size_t i = 0; i < count; i++) {
      const char *a_name = NULL, *b_name = NULL;
      pts_tensor_t *a = NULL, *b = NULL;
      OK(pts_container_parameter(c, i, &a_name, &a));
      OK(pts_container_parameter(loaded, i, &b_name, &b));
      size_t na = 0, nb = 1;
      OK(pts_tensor_nbytes(a, &na));
      OK(pts_tensor_nbytes(b, &nb));
      CHECK(na == nb && strcmp(a_name, b_name) == 0);
      unsigned char *ba = malloc(na), *bb = malloc(nb);
      OK(pts_tensor_copy_to_buffer(a, ba, na));
      OK(pts_tensor_copy_to_buffer(b, bb, nb));
      CHECK(memcmp(ba, bb, na) == 0);
      free(ba);
      free(bb);
      pts_tensor_free(a);
      pts_tensor_free(b);
    }
    pts_tensor_t *bias = NULL;
    OK(pts_container_state_tensor(loaded, "hidden_layers.2.bias", &bias));
    FAILS(pts_container_state_tensor(loaded, "hidden_layers.9.bias", &bias), PTS_ERROR_NOT_FOUND,
          "hidden_layers.9.bias");
    pts_tensor_free(bias);
    void *instance = NULL;
    FAILS(pts_container_model_instance(loaded, dummy_forward, &instance), PTS_ERROR_USAGE,
          "not built by a C factory");
    char *meta2 = NULL;
    OK(pts_container_restore(loaded, path, &meta2));
    pts_string_free(meta2);
  }
  pts_string_free(meta);
  pts_container_free(loaded);

  char *inference = NULL;
  OK(pts_container_save_inference(c, scratch_dir, NULL, NULL, &inference));
  CHECK(inference != NULL && strstr(inference, "/inference_") != NULL);
  pts_string_free(inference);
  pts_string_free(path);
  pts_container_free(c);
}

static void test_initialize_errors(void) {
  pts_container_t *c = NULL;
  OK(pts_container_new(NULL, &c));
  if (c == NULL) return;
  FAILS(pts_container_initialize(c, "no.such.Model", NULL, NULL, NULL, NULL, NULL),
        PTS_ERROR_UNKNOWN_NAME, "no.such.Model");
  FAILS(pts_container_initialize(c, "torch.nn.Linear", "{\"in_features\": 2,", NULL, NULL, NULL,
                                 NULL),
        PTS_ERROR_INVALID_JSON, "model_kwargs_json is not valid JSON");
  FAILS(pts_container_initialize(c, "torch.nn.Linear",
                                 "{\"in_features\": 2, \"out_features\": 1, \"colour\": 3}", NULL,
                                 NULL, NULL, NULL),
        PTS_ERROR_INVALID_KWARGS, "unexpected kwarg \"colour\"");
  FAILS(pts_container_initialize(c, "torch.nn.Linear", "{\"in_features\": 2, \"out_features\": 1}",
                                 "torch.optim.Adam", "{\"lr\": -1}", NULL, NULL),
        PTS_ERROR_INVALID_KWARGS, "lr");
  FAILS(pts_container_initialize(c, "torch.nn.Linear", "{\"in_features\": 2, \"out_features\": 1}",
                                 NULL, NULL, "torch.optim.lr_scheduler.StepLR", "{}"),
        PTS_ERROR_USAGE, "needs an optimizer");
  const char bad_utf8[] = {'t', (char)0xff, 0};
  FAILS(pts_container_initialize(c, bad_utf8, NULL, NULL, NULL, NULL, NULL),
        PTS_ERROR_INVALID_ARGUMENT, "UTF-8");
  pts_container_free(c);
}

static void test_tensor_errors(void) {
  pts_tensor_t *t = NULL;
  float data[6] = {1, 2, 3, 4, 5, 6};
  int64_t shape[2] = {2, 3};
  FAILS(pts_tensor_from_buffer(99, shape, 2, data, sizeof data, &t), PTS_ERROR_INVALID_ARGUMENT,
        "unknown dtype code 99");
  FAILS(pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 2, data, 20, &t), PTS_ERROR_INVALID_ARGUMENT,
        "needs 24 bytes, the buffer has 20");
  int64_t negative[2] = {-2, 3};
  FAILS(pts_tensor_from_buffer(PTS_DTYPE_F32, negative, 2, data, sizeof data, &t),
        PTS_ERROR_INVALID_ARGUMENT, "negative dimension");
  int64_t huge[2] = {INT64_MAX, INT64_MAX};
  FAILS(pts_tensor_from_buffer(PTS_DTYPE_F32, huge, 2, data, sizeof data, &t),
        PTS_ERROR_INVALID_ARGUMENT, "overflows");
  CHECK(t == NULL);

  /* A scalar and an empty tensor round-trip. */
  double scalar = 2.5, back = 0;
  OK(pts_tensor_from_buffer(PTS_DTYPE_F64, NULL, 0, &scalar, sizeof scalar, &t));
  OK(pts_tensor_copy_to_buffer(t, &back, sizeof back));
  CHECK(back == 2.5);
  int64_t dims[1];
  OK(pts_tensor_shape(t, dims, 0));
  pts_tensor_free(t);
  int64_t empty_shape[2] = {0, 4};
  OK(pts_tensor_from_buffer(PTS_DTYPE_I64, empty_shape, 2, NULL, 0, &t));
  FAILS(pts_tensor_shape(t, dims, 1), PTS_ERROR_INVALID_ARGUMENT, "has 2 dimensions");
  FAILS(pts_tensor_copy_to_buffer(t, data, 4), PTS_ERROR_INVALID_ARGUMENT, "has 0 bytes");
  pts_tensor_free(t);
}

/* Every pointer argument is checked: NULL is an error naming it. */
static void test_null_arguments(void) {
  pts_container_t *c = NULL;
  pts_checkpoint_t *ckpt = NULL;
  pts_tensor_t *t = NULL;
  pts_registry_t *r = NULL;
  char *s = NULL;
  const char *cs = NULL;
  size_t n = 0;
  double d = 0;
  pts_dtype_t dt = 0;
  const int64_t *shape = NULL;
  const uint8_t *bytes = NULL;
  void *instance = NULL;
  bool b = false;

  FAILS(pts_checkpoint_open(NULL, &ckpt), PTS_ERROR_NULL_ARGUMENT, "path");
  FAILS(pts_checkpoint_open("x.zip", NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_checkpoint_metadata(NULL, &cs), PTS_ERROR_NULL_ARGUMENT, "checkpoint");
  FAILS(pts_checkpoint_tensor_count(NULL, PTS_MEMBER_MODEL, &n), PTS_ERROR_NULL_ARGUMENT,
        "checkpoint");
  FAILS(pts_checkpoint_tensor_name(NULL, PTS_MEMBER_MODEL, 0, &cs), PTS_ERROR_NULL_ARGUMENT,
        "checkpoint");
  FAILS(pts_checkpoint_tensor_info(NULL, PTS_MEMBER_MODEL, "a", &dt, &shape, &n, &n),
        PTS_ERROR_NULL_ARGUMENT, "checkpoint");
  FAILS(pts_checkpoint_tensor_read(NULL, PTS_MEMBER_MODEL, "a", &d, 8), PTS_ERROR_NULL_ARGUMENT,
        "checkpoint");
  FAILS(pts_checkpoint_tensor_borrow(NULL, PTS_MEMBER_MODEL, "a", &bytes, &n),
        PTS_ERROR_NULL_ARGUMENT, "checkpoint");
  FAILS(pts_checkpoint_tensor(NULL, PTS_MEMBER_MODEL, "a", &t), PTS_ERROR_NULL_ARGUMENT,
        "checkpoint");

  OK(pts_checkpoint_open(golden("rust_mlp_inference.zip"), &ckpt));
  FAILS(pts_checkpoint_metadata(ckpt, NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_MODEL, NULL, &dt, &shape, &n, &n),
        PTS_ERROR_NULL_ARGUMENT, "name");
  FAILS(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_MODEL, "fc1.bias", &dt, NULL, &n, &n),
        PTS_ERROR_NULL_ARGUMENT, "shape");
  FAILS(pts_checkpoint_tensor_read(ckpt, PTS_MEMBER_MODEL, "fc1.bias", NULL, 32),
        PTS_ERROR_NULL_ARGUMENT, "data");
  pts_checkpoint_free(ckpt);

  FAILS(pts_registry_new(NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_registry_register_model(NULL, "x", NULL, NULL, NULL), PTS_ERROR_NULL_ARGUMENT,
        "registry");
  FAILS(pts_registry_contains(NULL, "x", &b), PTS_ERROR_NULL_ARGUMENT, "registry");
  OK(pts_registry_new(&r));
  FAILS(pts_registry_register_model(r, NULL, NULL, NULL, NULL), PTS_ERROR_NULL_ARGUMENT, "name");
  FAILS(pts_registry_register_model(r, "x", NULL, NULL, NULL), PTS_ERROR_NULL_ARGUMENT, "factory");
  OK(pts_registry_contains(r, "torch.nn.Linear", &b));
  CHECK(b);
  pts_registry_free(r);

  FAILS(pts_container_new(NULL, NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_container_initialize(NULL, "torch.nn.Linear", NULL, NULL, NULL, NULL, NULL),
        PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_load(NULL, NULL, &c, &s), PTS_ERROR_NULL_ARGUMENT, "path");
  FAILS(pts_container_load(NULL, "x.zip", NULL, &s), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_container_load(NULL, "x.zip", &c, NULL), PTS_ERROR_NULL_ARGUMENT, "metadata_json");
  FAILS(pts_container_restore(NULL, "x.zip", &s), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_save(NULL, ".", NULL, NULL, &s), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_save_inference(NULL, ".", NULL, NULL, &s), PTS_ERROR_NULL_ARGUMENT,
        "container");
  FAILS(pts_container_zero_grad(NULL), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_step(NULL), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_scheduler_step(NULL), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_scheduler_step_metric(NULL, 1.0), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_param_group_count(NULL, &n), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_lr(NULL, 0, &d), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_forward(NULL, NULL, false, &t), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_parameter_count(NULL, &n), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_parameter(NULL, 0, &cs, &t), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_state_tensor(NULL, "a", &t), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_model_instance(NULL, dummy_forward, &instance), PTS_ERROR_NULL_ARGUMENT,
        "container");
  FAILS(pts_container_set_producer_language(NULL, "c"), PTS_ERROR_NULL_ARGUMENT, "container");

  OK(pts_container_new(NULL, &c));
  FAILS(pts_container_set_producer_language(c, NULL), PTS_ERROR_NULL_ARGUMENT, "language");
  FAILS(pts_container_initialize(c, NULL, NULL, NULL, NULL, NULL, NULL), PTS_ERROR_NULL_ARGUMENT,
        "model_class");
  FAILS(pts_container_save(c, NULL, NULL, NULL, &s), PTS_ERROR_NULL_ARGUMENT, "dir");
  FAILS(pts_container_save(c, ".", NULL, NULL, NULL), PTS_ERROR_NULL_ARGUMENT, "path");
  FAILS(pts_container_forward(c, NULL, false, &t), PTS_ERROR_NULL_ARGUMENT, "input");
  FAILS(pts_container_lr(c, 0, NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  pts_container_free(c);

  FAILS(pts_tensor_from_buffer(PTS_DTYPE_F32, NULL, 1, &d, 4, &t), PTS_ERROR_NULL_ARGUMENT,
        "shape");
  int64_t one = 1;
  FAILS(pts_tensor_from_buffer(PTS_DTYPE_F32, &one, 1, NULL, 4, &t), PTS_ERROR_NULL_ARGUMENT,
        "data");
  FAILS(pts_tensor_from_buffer(PTS_DTYPE_F32, &one, 1, &d, 4, NULL), PTS_ERROR_NULL_ARGUMENT,
        "out");
  FAILS(pts_tensor_dtype(NULL, &dt), PTS_ERROR_NULL_ARGUMENT, "tensor");
  FAILS(pts_tensor_ndim(NULL, &n), PTS_ERROR_NULL_ARGUMENT, "tensor");
  FAILS(pts_tensor_shape(NULL, NULL, 0), PTS_ERROR_NULL_ARGUMENT, "tensor");
  FAILS(pts_tensor_nbytes(NULL, &n), PTS_ERROR_NULL_ARGUMENT, "tensor");
  FAILS(pts_tensor_copy_to_buffer(NULL, &d, 8), PTS_ERROR_NULL_ARGUMENT, "tensor");
  FAILS(pts_tensor_from_torch(NULL, &t), PTS_ERROR_NULL_ARGUMENT, "torch_tensor");
  FAILS(pts_tensor_torch_ptr(NULL, (const void **)&instance), PTS_ERROR_NULL_ARGUMENT, "tensor");
  FAILS(pts_model_builder_add_parameter(NULL, "w", NULL), PTS_ERROR_NULL_ARGUMENT, "builder");
  FAILS(pts_model_builder_add_buffer(NULL, "w", NULL), PTS_ERROR_NULL_ARGUMENT, "builder");
  FAILS(pts_model_builder_set_forward(NULL, NULL, NULL, NULL), PTS_ERROR_NULL_ARGUMENT, "builder");
  FAILS(pts_kwargs_i64(NULL, "n", (int64_t *)&n), PTS_ERROR_NULL_ARGUMENT, "kwargs");
  FAILS(pts_kwargs_json(NULL, &s), PTS_ERROR_NULL_ARGUMENT, "kwargs");

  /* The free functions and error accessors accept NULL. */
  pts_error_free(NULL);
  pts_checkpoint_free(NULL);
  pts_container_free(NULL);
  pts_tensor_free(NULL);
  pts_registry_free(NULL);
  pts_string_free(NULL);
  CHECK(pts_error_code(NULL) == 0 && strcmp(pts_error_message(NULL), "") == 0);
  CHECK(c != NULL && s == NULL);
}

/* ---- a model registered from C ------------------------------------------ */

/* tests.c.Scale(n): y = x * weight, elementwise over the last axis of n
 * floats; weight starts at 1, 2, ..., n. The forward runs in C over
 * buffers, as a C or Go model would. */

static int factory_finalized = 0;
static int instances_created = 0;
static int instances_finalized = 0;

typedef struct {
  pts_tensor_t *weight; /* shares storage with the container's parameter */
  int64_t n;
} scale_model;

static void finalize_factory(void *user_data) {
  CHECK(user_data == &factory_finalized);
  factory_finalized++;
}

static void finalize_instance(void *instance) {
  scale_model *m = instance;
  pts_tensor_free(m->weight);
  free(m);
  instances_finalized++;
}

static pts_error_t *scale_forward(void *instance, const pts_tensor_t *input, bool train,
                                  pts_tensor_t **output) {
  (void)train;
  scale_model *m = instance;
  size_t nbytes = 0, ndim = 0;
  pts_error_t *err = pts_tensor_nbytes(input, &nbytes);
  if (err == NULL) err = pts_tensor_ndim(input, &ndim);
  if (err != NULL) return err;
  int64_t shape[8];
  if (ndim == 0 || ndim > 8) return pts_error_new(0, "tests.c.Scale: input must have 1 to 8 dims");
  if ((err = pts_tensor_shape(input, shape, 8)) != NULL) return err;
  if (shape[ndim - 1] != m->n) return pts_error_new(0, "tests.c.Scale: last dimension is not n");
  float *x = malloc(nbytes + 1);
  float *w = malloc((size_t)m->n * sizeof(float));
  err = pts_tensor_copy_to_buffer(input, x, nbytes);
  if (err == NULL) err = pts_tensor_copy_to_buffer(m->weight, w, (size_t)m->n * sizeof(float));
  if (err == NULL) {
    for (size_t i = 0; i < nbytes / sizeof(float); i++) x[i] *= w[i % (size_t)m->n];
    err = pts_tensor_from_buffer(PTS_DTYPE_F32, shape, ndim, x, nbytes, output);
  }
  free(x);
  free(w);
  return err;
}

static pts_error_t *not_scale_forward(void *instance, const pts_tensor_t *input, bool train,
                                      pts_tensor_t **output) {
  return dummy_forward(instance, input, train, output);
}

static pts_error_t *scale_factory(void *user_data, const pts_kwargs_t *kwargs, bool loading,
                                  pts_model_builder_t *builder) {
  (void)user_data;
  int64_t n = 0;
  bool fail = false, thread_safe = false;
  pts_error_t *err = pts_kwargs_i64(kwargs, "n", &n);
  if (err == NULL) err = pts_kwargs_bool_or(kwargs, "fail", false, &fail);
  if (err == NULL) err = pts_kwargs_bool_or(kwargs, "thread_safe", false, &thread_safe);
  if (err != NULL) return err;
  if (fail) return pts_error_new(PTS_ERROR_CALLBACK, "the factory was asked to fail");
  if (n < 1 || n > 64) return pts_error_new(PTS_ERROR_INVALID_KWARGS, "kwarg \"n\" must be 1..64");
  /* scale_forward only reads the weight: safe to run on several threads. */
  if (thread_safe && (err = pts_model_builder_set_thread_safe(builder)) != NULL) return err;

  float init[64];
  for (int64_t i = 0; i < n; i++) init[i] = (float)(i + 1);
  scale_model *m = calloc(1, sizeof *m);
  m->n = n;
  /* Loading: untouched memory, every value comes from the file. */
  err = loading ? pts_tensor_empty(PTS_DTYPE_F32, &n, 1, &m->weight)
                : pts_tensor_from_buffer(PTS_DTYPE_F32, &n, 1, init, (size_t)n * sizeof(float),
                                         &m->weight);
  if (err == NULL) err = pts_model_builder_add_parameter(builder, "scale.weight", m->weight);
  if (err == NULL) {
    pts_tensor_t *count = NULL;
    int64_t zero = 0;
    err = pts_tensor_from_buffer(PTS_DTYPE_I64, NULL, 0, &zero, sizeof zero, &count);
    if (err == NULL) err = pts_model_builder_add_buffer(builder, "scale.calls", count);
    pts_tensor_free(count);
  }
  instances_created++;
  /* Ownership of m passes to the library here, even on error. */
  pts_error_t *set = pts_model_builder_set_forward(builder, scale_forward, m, finalize_instance);
  return err != NULL ? (pts_error_free(set), err) : set;
}

static void test_c_registered_model(void) {
  pts_registry_t *r = NULL;
  OK(pts_registry_new(&r));
  if (r == NULL) return;
  OK(pts_registry_register_model(r, "tests.c.Scale", scale_factory, &factory_finalized,
                                 finalize_factory));
  FAILS(pts_registry_register_model(r, "tests.c.Scale", scale_factory, NULL, NULL),
        PTS_ERROR_DUPLICATE_NAME, "tests.c.Scale");

  pts_container_t *c = NULL;
  OK(pts_container_new(r, &c));
  pts_registry_free(r); /* the container keeps its snapshot */
  CHECK(factory_finalized == 0);

  FAILS(pts_container_initialize(c, "tests.c.Scale", "{}", NULL, NULL, NULL, NULL),
        PTS_ERROR_INVALID_KWARGS, "missing required kwarg \"n\"");
  FAILS(
      pts_container_initialize(c, "tests.c.Scale", "{\"n\": 3, \"m\": 1}", NULL, NULL, NULL, NULL),
      PTS_ERROR_INVALID_KWARGS, "unexpected kwarg \"m\"");
  FAILS(pts_container_initialize(c, "tests.c.Scale", "{\"n\": 3, \"fail\": true}", NULL, NULL, NULL,
                                 NULL),
        PTS_ERROR_FACTORY, "the factory was asked to fail");
  CHECK(instances_created == instances_finalized); /* failed builds leak nothing */

  OK(pts_container_initialize(c, "tests.c.Scale", "{\"n\": 3}", "torch.optim.SGD", "{\"lr\": 0.1}",
                              NULL, NULL));
  void *instance = NULL;
  OK(pts_container_model_instance(c, scale_forward, &instance));
  scale_model *m = instance;
  CHECK(m != NULL && m->n == 3);
  /* The instance is only handed to whoever names its forward function. */
  FAILS(pts_container_model_instance(c, not_scale_forward, &instance), PTS_ERROR_USAGE,
        "with the given forward function");

  float x[6] = {1, 1, 1, 2, 2, 2}, y[6];
  int64_t shape[2] = {2, 3};
  pts_tensor_t *xt = NULL, *yt = NULL;
  OK(pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 2, x, sizeof x, &xt));
  OK(pts_container_forward(c, xt, false, &yt));
  OK(pts_tensor_copy_to_buffer(yt, y, sizeof y));
  CHECK(y[0] == 1 && y[1] == 2 && y[2] == 3 && y[5] == 6);
  pts_tensor_free(yt);

  int64_t bad_shape[2] = {3, 2};
  pts_tensor_t *bad = NULL;
  OK(pts_tensor_from_buffer(PTS_DTYPE_F32, bad_shape, 2, x, sizeof x, &bad));
  yt = NULL;
  FAILS(pts_container_forward(c, bad, false, &yt), PTS_ERROR_CALLBACK, "last dimension is not n");
  CHECK(yt == NULL);
  pts_tensor_free(bad);

  /* The container's parameter is the factory's tensor: writes through
   * one are seen through the other. */
  const char *name = NULL;
  pts_tensor_t *p = NULL;
  OK(pts_container_parameter(c, 0, &name, &p));
  CHECK(name != NULL && strcmp(name, "scale.weight") == 0);
  float w[3];
  OK(pts_tensor_copy_to_buffer(p, w, sizeof w));
  CHECK(w[0] == 1 && w[2] == 3);
  pts_tensor_free(p);

  char *path = NULL;
  OK(pts_container_save(c, scratch_dir, "c_scale", NULL, &path));
  pts_container_free(c); /* the model instance is finalized */
  CHECK(instances_created == instances_finalized);
  CHECK(factory_finalized == 1); /* last user of the factory gone */

  /* Loading resolves the class through a registry again. */
  pts_container_t *loaded = NULL;
  char *meta = NULL;
  FAILS(pts_container_load(NULL, path, &loaded, &meta), PTS_ERROR_UNKNOWN_NAME, "tests.c.Scale");
  OK(pts_registry_new(&r));
  OK(pts_registry_register_model(r, "tests.c.Scale", scale_factory, &factory_finalized,
                                 finalize_factory));
  OK(pts_container_load(r, path, &loaded, &meta));
  if (loaded != NULL) {
    OK(pts_container_forward(loaded, xt, false, &yt));
    OK(pts_tensor_copy_to_buffer(yt, y, sizeof y));
    CHECK(y[0] == 1 && y[1] == 2 && y[2] == 3 && y[5] == 6); /* the loaded weights, not zeros */
    pts_tensor_free(yt);
  }
  pts_string_free(meta);
  pts_string_free(path);
  pts_container_free(loaded);
  pts_registry_free(r);
  pts_tensor_free(xt);
  CHECK(factory_finalized == 2);
  CHECK(instances_created == instances_finalized);
}

static void test_callback_errors_keep_ownership_rules(void) {
  /* Registering with a NULL name still finalizes the user data. */
  pts_registry_t *r = NULL;
  OK(pts_registry_new(&r));
  int before = factory_finalized;
  FAILS(pts_registry_register_model(r, NULL, scale_factory, &factory_finalized, finalize_factory),
        PTS_ERROR_NULL_ARGUMENT, "name");
  CHECK(factory_finalized == before + 1);
  pts_registry_free(r);

  pts_error_t *e = pts_error_new(0, NULL);
  CHECK(pts_error_code(e) == PTS_ERROR_CALLBACK && strcmp(pts_error_message(e), "") == 0);
  pts_error_free(e);
}

/* ---- load options, _ex functions, inference models ----------------------- */

/* Whether a call succeeded; the error, if any, is freed. */
static bool succeeded(pts_error_t *err) {
  bool ok = err == NULL;
  pts_error_free(err);
  return ok;
}

/* Whether two tensors have the same dtype, shape and bytes. */
static bool tensors_equal(const pts_tensor_t *a, const pts_tensor_t *b) {
  size_t na = 0, nb = 1, da = 0, db = 1;
  pts_dtype_t ta = 0, tb = 1;
  int64_t sa[8], sb[8];
  if (!succeeded(pts_tensor_nbytes(a, &na)) || !succeeded(pts_tensor_nbytes(b, &nb)) ||
      !succeeded(pts_tensor_ndim(a, &da)) || !succeeded(pts_tensor_ndim(b, &db)) ||
      !succeeded(pts_tensor_dtype(a, &ta)) || !succeeded(pts_tensor_dtype(b, &tb)) || na != nb ||
      da != db || ta != tb || da > 8 || !succeeded(pts_tensor_shape(a, sa, 8)) ||
      !succeeded(pts_tensor_shape(b, sb, 8)) || memcmp(sa, sb, da * sizeof sa[0]) != 0) {
    return false;
  }
  unsigned char *ba = malloc(na + 1), *bb = malloc(nb + 1);
  bool equal = succeeded(pts_tensor_copy_to_buffer(a, ba, na)) &&
               succeeded(pts_tensor_copy_to_buffer(b, bb, nb)) && memcmp(ba, bb, na) == 0;
  free(ba);
  free(bb);
  return equal;
}

/* Whether two containers hold the same parameters (names and bytes). */
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
    same = succeeded(pts_container_parameter(a, i, &a_name, &ta)) &&
           succeeded(pts_container_parameter(b, i, &b_name, &tb)) && strcmp(a_name, b_name) == 0 &&
           tensors_equal(ta, tb);
    pts_tensor_free(ta);
    pts_tensor_free(tb);
  }
  return same;
}

static void test_load_options(void) {
  pts_load_options_t *o = NULL;
  FAILS(pts_load_options_new(NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_load_options_set_verify(NULL, false), PTS_ERROR_NULL_ARGUMENT, "options");
  FAILS(pts_load_options_set_copy(NULL, true), PTS_ERROR_NULL_ARGUMENT, "options");
  pts_load_options_free(NULL);
  OK(pts_load_options_new(&o));
  CHECK(o != NULL);
  OK(pts_load_options_set_verify(o, false));
  OK(pts_load_options_set_verify(o, true));
  OK(pts_load_options_set_copy(o, true));
  OK(pts_load_options_set_copy(o, false));
  pts_load_options_free(o);
}

/* NULL options, a copy and an unverified load all load a golden file with
 * the same tensors as pts_container_load, and restore it again. */
static void test_load_ex_and_restore_ex(void) {
  const char *file = golden("rust_mlp_adam_warm_restarts_checkpoint.zip");
  pts_container_t *reference = NULL;
  char *meta = NULL;
  OK(pts_container_load(NULL, file, &reference, &meta));
  pts_string_free(meta);
  if (reference == NULL) return;
  double reference_lr = 0;
  OK(pts_container_lr(reference, 0, &reference_lr));

  pts_load_options_t *copy = NULL, *unverified = NULL;
  OK(pts_load_options_new(&copy));
  OK(pts_load_options_set_copy(copy, true));
  OK(pts_load_options_new(&unverified));
  OK(pts_load_options_set_verify(unverified, false));
  const pts_load_options_t *variants[3] = {NULL, copy, unverified};
  for (int i = 0; i < 3; i++) {
    pts_container_t *c = NULL;
    meta = NULL;
    OK(pts_container_load_ex(NULL, file, variants[i], &c, &meta));
    if (c == NULL) continue;
    CHECK(meta != NULL && strstr(meta, "\"model_kwargs\"") != NULL);
    pts_string_free(meta);
    CHECK(same_parameters(reference, c));
    double lr = -1;
    OK(pts_container_lr(c, 0, &lr));
    CHECK(lr == reference_lr);
    /* Train one step, then restore the file: back to the reference. */
    OK(pts_container_step(c));
    meta = NULL;
    OK(pts_container_restore_ex(c, file, variants[i], &meta));
    CHECK(meta != NULL && strstr(meta, "\"optim_kwargs\"") != NULL);
    pts_string_free(meta);
    CHECK(same_parameters(reference, c));
    pts_container_free(c);
  }
  pts_checkpoint_t *ckpt = NULL;
  for (int i = 0; i < 3; i++) {
    ckpt = NULL;
    OK(pts_checkpoint_open_ex(file, variants[i], &ckpt));
    CHECK(ckpt != NULL);
    pts_checkpoint_free(ckpt);
  }

  /* Every pointer argument of the new functions is checked. */
  pts_container_t *none = NULL;
  char *s = NULL;
  ckpt = NULL;
  FAILS(pts_container_load_ex(NULL, NULL, NULL, &none, &s), PTS_ERROR_NULL_ARGUMENT, "path");
  FAILS(pts_container_load_ex(NULL, file, copy, NULL, &s), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_container_load_ex(NULL, file, copy, &none, NULL), PTS_ERROR_NULL_ARGUMENT,
        "metadata_json");
  FAILS(pts_container_restore_ex(NULL, file, NULL, &s), PTS_ERROR_NULL_ARGUMENT, "container");
  FAILS(pts_container_restore_ex(reference, NULL, NULL, &s), PTS_ERROR_NULL_ARGUMENT, "path");
  FAILS(pts_container_restore_ex(reference, file, NULL, NULL), PTS_ERROR_NULL_ARGUMENT,
        "metadata_json");
  FAILS(pts_checkpoint_open_ex(NULL, NULL, &ckpt), PTS_ERROR_NULL_ARGUMENT, "path");
  FAILS(pts_checkpoint_open_ex(file, unverified, NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  CHECK(none == NULL && s == NULL && ckpt == NULL);
  pts_load_options_free(copy);
  pts_load_options_free(unverified);
  pts_container_free(reference);
}

/* A copy of a golden file with one byte of a tensor flipped: refused by
 * default (the CRC-32), loaded as it is with verify off. */
static void test_verify_off_skips_tensor_crcs(void) {
  const char *good = golden("rust_mlp_inference.zip");
  const char *name = "fc1.weight";
  pts_checkpoint_t *ckpt = NULL;
  OK(pts_checkpoint_open(good, &ckpt));
  if (ckpt == NULL) return;
  pts_dtype_t dtype = 0;
  const int64_t *shape = NULL;
  size_t ndim = 0, nbytes = 0, len = 0;
  OK(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_MODEL, name, &dtype, &shape, &ndim, &nbytes));
  unsigned char *weight = malloc(nbytes + 1);
  OK(pts_checkpoint_tensor_read(ckpt, PTS_MEMBER_MODEL, name, weight, nbytes));
  pts_checkpoint_free(ckpt);
  char *bytes = read_file(good, &len);
  CHECK(bytes != NULL && nbytes >= 16);
  /* Where the tensor's bytes lie in the file: found once. */
  size_t at = len, found = 0;
  for (size_t i = 0; bytes != NULL && nbytes >= 16 && i + nbytes <= len; i++) {
    if (memcmp(bytes + i, weight, nbytes) == 0) at = i, found++;
  }
  CHECK(found == 1);
  if (found != 1) {
    free(bytes);
    free(weight);
    return;
  }
  bytes[at + 5] ^= 0x40;
  weight[5] ^= 0x40;
  const char *flipped = scratch("flipped_tensor.zip");
  CHECK(write_file(flipped, bytes, len));
  free(bytes);

  pts_load_options_t *unverified = NULL;
  OK(pts_load_options_new(&unverified));
  OK(pts_load_options_set_verify(unverified, false));
  pts_container_t *c = NULL;
  pts_model_t *m = NULL;
  char *meta = NULL;
  FAILS(pts_checkpoint_open_ex(flipped, NULL, &ckpt), PTS_ERROR_FORMAT, "CRC-32 mismatch");
  FAILS(pts_container_load(NULL, flipped, &c, &meta), PTS_ERROR_FORMAT, "CRC-32 mismatch");
  FAILS(pts_container_load_ex(NULL, flipped, NULL, &c, &meta), PTS_ERROR_FORMAT, "CRC-32 mismatch");
  FAILS(pts_model_load(NULL, flipped, NULL, &m, &meta), PTS_ERROR_FORMAT, "CRC-32 mismatch");
  CHECK(c == NULL && m == NULL && meta == NULL);

  OK(pts_checkpoint_open_ex(flipped, unverified, &ckpt));
  pts_checkpoint_free(ckpt);
  OK(pts_container_load_ex(NULL, flipped, unverified, &c, &meta));
  pts_string_free(meta);
  meta = NULL;
  if (c != NULL) {
    /* The unverified load took the file's bytes as they are. */
    pts_tensor_t *w = NULL;
    unsigned char *loaded = malloc(nbytes + 1);
    OK(pts_container_state_tensor(c, name, &w));
    OK(pts_tensor_copy_to_buffer(w, loaded, nbytes));
    CHECK(memcmp(loaded, weight, nbytes) == 0);
    free(loaded);
    pts_tensor_free(w);
    /* A restore refuses the file by default, and takes it unverified. */
    FAILS(pts_container_restore_ex(c, flipped, NULL, &meta), PTS_ERROR_FORMAT, "CRC-32 mismatch");
    FAILS(pts_container_restore(c, flipped, &meta), PTS_ERROR_FORMAT, "CRC-32 mismatch");
    OK(pts_container_restore_ex(c, good, NULL, &meta));
    pts_string_free(meta);
    meta = NULL;
    OK(pts_container_restore_ex(c, flipped, unverified, &meta));
    pts_string_free(meta);
    meta = NULL;
  }
  pts_container_free(c);
  OK(pts_model_load(NULL, flipped, unverified, &m, &meta));
  pts_string_free(meta);
  pts_model_free(m);
  pts_load_options_free(unverified);
  free(weight);
}

/* Requests served by threads: each thread runs the requests whose index
 * is its own modulo the thread count, several times over, and counts the
 * outputs that differ from the sequential ones. */
#define REQUESTS 16
#define THREADS 4
#define ROUNDS 8
#define ROWS 5

typedef struct {
  const pts_model_t *model;
  int64_t cols;
  unsigned char *expected[REQUESTS];
  size_t expected_len[REQUESTS];
  int thread;
  int mismatches;
} forward_job;

static void request_input(int i, int64_t cols, float *x) {
  for (int64_t j = 0; j < ROWS * cols; j++) x[j] = (float)((i * 7 + j * 3) % 11) / 4.0f - 1.0f;
}

/* Runs request `i`; returns its output bytes (malloc'ed) or NULL. */
static unsigned char *forward_request(const pts_model_t *m, int64_t cols, int i, size_t *len) {
  float x[ROWS * 64];
  int64_t shape[2] = {ROWS, cols};
  request_input(i, cols, x);
  pts_tensor_t *xt = NULL, *yt = NULL;
  unsigned char *out = NULL;
  if (succeeded(pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 2, x,
                                       (size_t)(ROWS * cols) * sizeof(float), &xt)) &&
      succeeded(pts_model_forward(m, xt, &yt)) && succeeded(pts_tensor_nbytes(yt, len))) {
    out = malloc(*len + 1);
    if (!succeeded(pts_tensor_copy_to_buffer(yt, out, *len))) {
      free(out);
      out = NULL;
    }
  }
  pts_tensor_free(xt);
  pts_tensor_free(yt);
  return out;
}

static void *forward_thread(void *arg) {
  forward_job *job = arg;
  for (int round = 0; round < ROUNDS; round++) {
    for (int i = job->thread; i < REQUESTS; i += THREADS) {
      size_t len = 0;
      unsigned char *out = forward_request(job->model, job->cols, i, &len);
      if (out == NULL || len != job->expected_len[i] || memcmp(out, job->expected[i], len) != 0) {
        job->mismatches++;
      }
      free(out);
    }
  }
  return NULL;
}

/* Checks that THREADS threads at once get the sequential outputs. */
static void check_threaded_forward(const pts_model_t *m, int64_t cols) {
  forward_job jobs[THREADS];
  memset(jobs, 0, sizeof jobs);
  unsigned char *expected[REQUESTS];
  size_t expected_len[REQUESTS];
  for (int i = 0; i < REQUESTS; i++) {
    expected[i] = forward_request(m, cols, i, &expected_len[i]);
    CHECK(expected[i] != NULL);
  }
  pthread_t threads[THREADS];
  bool started[THREADS];
  for (int t = 0; t < THREADS; t++) {
    jobs[t].model = m;
    jobs[t].cols = cols;
    jobs[t].thread = t;
    memcpy(jobs[t].expected, expected, sizeof expected);
    memcpy(jobs[t].expected_len, expected_len, sizeof expected_len);
    started[t] = pthread_create(&threads[t], NULL, forward_thread, &jobs[t]) == 0;
    CHECK(started[t]);
  }
  for (int t = 0; t < THREADS; t++) {
    if (started[t]) pthread_join(threads[t], NULL);
    CHECK(jobs[t].mismatches == 0);
  }
  for (int i = 0; i < REQUESTS; i++) free(expected[i]);
}

static void test_inference_model(void) {
  const char *file = golden("rust_mlp_inference.zip");
  pts_model_t *m = NULL;
  char *meta = NULL;
  OK(pts_model_load(NULL, file, NULL, &m, &meta));
  if (m == NULL) return;
  CHECK(meta != NULL && strstr(meta, "\"hidden_dim\":8") != NULL);
  pts_string_free(meta);
  const char *cls = NULL;
  OK(pts_model_class(m, &cls));
  CHECK(cls != NULL && strcmp(cls, "pytorch_saver.models.MLP") == 0);
  bool concurrent = false;
  OK(pts_model_is_concurrent(m, &concurrent));
  CHECK(concurrent); /* a built-in model */

  /* The same state and outputs as a container's, in eval mode. */
  pts_container_t *c = NULL;
  meta = NULL;
  OK(pts_container_load(NULL, file, &c, &meta));
  pts_string_free(meta);
  if (c != NULL) {
    pts_tensor_t *a = NULL, *b = NULL;
    OK(pts_model_state_tensor(m, "hidden_layers.4.bias", &a));
    OK(pts_container_state_tensor(c, "hidden_layers.4.bias", &b));
    CHECK(a != NULL && b != NULL && tensors_equal(a, b));
    pts_tensor_free(a);
    pts_tensor_free(b);
    float x[ROWS * 4];
    int64_t shape[2] = {ROWS, 4};
    request_input(3, 4, x);
    pts_tensor_t *xt = NULL, *ym = NULL, *yc = NULL;
    OK(pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 2, x, sizeof x, &xt));
    OK(pts_model_forward(m, xt, &ym));
    OK(pts_container_forward(c, xt, false, &yc));
    CHECK(ym != NULL && yc != NULL && tensors_equal(ym, yc));
    pts_tensor_free(ym);
    pts_tensor_free(yc);
    /* A wrong input shape is a libtorch error. */
    int64_t bad_shape[2] = {4, ROWS};
    pts_tensor_t *bad = NULL;
    ym = NULL;
    OK(pts_tensor_from_buffer(PTS_DTYPE_F32, bad_shape, 2, x, sizeof x, &bad));
    FAILS(pts_model_forward(m, bad, &ym), PTS_ERROR_TORCH, "shapes cannot be multiplied");
    CHECK(ym == NULL);
    pts_tensor_free(bad);
    pts_tensor_free(xt);
    pts_container_free(c);
  }
  pts_tensor_t *t = NULL;
  FAILS(pts_model_state_tensor(m, "hidden_layers.9.bias", &t), PTS_ERROR_NOT_FOUND,
        "hidden_layers.9.bias");
  check_threaded_forward(m, 4);

  /* Every pointer argument is checked. */
  FAILS(pts_model_load(NULL, NULL, NULL, &m, &meta), PTS_ERROR_NULL_ARGUMENT, "path");
  FAILS(pts_model_load(NULL, file, NULL, NULL, &meta), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_model_load(NULL, file, NULL, &m, NULL), PTS_ERROR_NULL_ARGUMENT, "metadata_json");
  FAILS(pts_model_forward(NULL, t, &t), PTS_ERROR_NULL_ARGUMENT, "model");
  FAILS(pts_model_forward(m, NULL, &t), PTS_ERROR_NULL_ARGUMENT, "input");
  pts_tensor_t *input = NULL;
  int64_t one = 1;
  OK(pts_tensor_empty(PTS_DTYPE_F32, &one, 1, &input));
  FAILS(pts_model_forward(m, input, NULL), PTS_ERROR_NULL_ARGUMENT, "output");
  pts_tensor_free(input);
  FAILS(pts_model_class(NULL, &cls), PTS_ERROR_NULL_ARGUMENT, "model");
  FAILS(pts_model_class(m, NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_model_is_concurrent(NULL, &concurrent), PTS_ERROR_NULL_ARGUMENT, "model");
  FAILS(pts_model_is_concurrent(m, NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  FAILS(pts_model_state_tensor(NULL, "fc1.weight", &t), PTS_ERROR_NULL_ARGUMENT, "model");
  FAILS(pts_model_state_tensor(m, NULL, &t), PTS_ERROR_NULL_ARGUMENT, "name");
  FAILS(pts_model_state_tensor(m, "fc1.weight", NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  CHECK(t == NULL);
  pts_model_free(m);
  pts_model_free(NULL);
}

static void test_tensor_empty(void) {
  pts_tensor_t *t = NULL;
  int64_t shape[3] = {3, 0, 5};
  int64_t dims[3] = {0, 0, 0};
  size_t ndim = 0, nbytes = 1;
  pts_dtype_t dtype = 0;
  int64_t matrix[2] = {3, 5};
  OK(pts_tensor_empty(PTS_DTYPE_F64, matrix, 2, &t));
  OK(pts_tensor_ndim(t, &ndim));
  OK(pts_tensor_shape(t, dims, 3));
  OK(pts_tensor_dtype(t, &dtype));
  OK(pts_tensor_nbytes(t, &nbytes));
  CHECK(ndim == 2 && dims[0] == 3 && dims[1] == 5 && dtype == PTS_DTYPE_F64 && nbytes == 120);
  pts_tensor_free(t);
  t = NULL;
  OK(pts_tensor_empty(PTS_DTYPE_BOOL, shape, 3, &t));
  OK(pts_tensor_nbytes(t, &nbytes));
  OK(pts_tensor_dtype(t, &dtype));
  CHECK(nbytes == 0 && dtype == PTS_DTYPE_BOOL);
  pts_tensor_free(t);
  t = NULL;
  OK(pts_tensor_empty(PTS_DTYPE_I8, NULL, 0, &t)); /* a scalar */
  OK(pts_tensor_ndim(t, &ndim));
  OK(pts_tensor_nbytes(t, &nbytes));
  CHECK(ndim == 0 && nbytes == 1);
  pts_tensor_free(t);

  t = NULL;
  int64_t negative[2] = {4, -1};
  FAILS(pts_tensor_empty(PTS_DTYPE_F32, negative, 2, &t), PTS_ERROR_INVALID_ARGUMENT,
        "negative dimension -1");
  FAILS(pts_tensor_empty(99, matrix, 2, &t), PTS_ERROR_INVALID_ARGUMENT, "unknown dtype code 99");
  FAILS(pts_tensor_empty(PTS_DTYPE_F32, NULL, 2, &t), PTS_ERROR_NULL_ARGUMENT, "shape");
  FAILS(pts_tensor_empty(PTS_DTYPE_F32, matrix, 2, NULL), PTS_ERROR_NULL_ARGUMENT, "out");
  CHECK(t == NULL);
}

/* A model registered from C runs its forward calls one at a time unless
 * its factory declared them thread-safe. */
static void test_c_model_thread_safety(void) {
  FAILS(pts_model_builder_set_thread_safe(NULL), PTS_ERROR_NULL_ARGUMENT, "builder");
  pts_registry_t *r = NULL;
  OK(pts_registry_new(&r));
  if (r == NULL) return;
  OK(pts_registry_register_model(r, "tests.c.Scale", scale_factory, &factory_finalized,
                                 finalize_factory));
  const char *kwargs[2] = {"{\"n\": 3}", "{\"n\": 3, \"thread_safe\": true}"};
  const char *prefixes[2] = {"c_serial", "c_thread_safe"};
  for (int i = 0; i < 2; i++) {
    pts_container_t *c = NULL;
    char *path = NULL;
    OK(pts_container_new(r, &c));
    OK(pts_container_initialize(c, "tests.c.Scale", kwargs[i], NULL, NULL, NULL, NULL));
    OK(pts_container_save_inference(c, scratch_dir, prefixes[i], NULL, &path));
    pts_container_free(c);
    if (path == NULL) continue;

    pts_model_t *m = NULL;
    char *meta = NULL;
    OK(pts_model_load(r, path, NULL, &m, &meta));
    pts_string_free(meta);
    pts_string_free(path);
    if (m == NULL) continue;
    bool concurrent = i == 0;
    OK(pts_model_is_concurrent(m, &concurrent));
    CHECK(concurrent == (i == 1));
    /* The loaded weights (1, 2, 3), not the uninitialized build's. */
    float x[3] = {1, 1, 1}, y[3] = {0, 0, 0};
    int64_t shape[1] = {3};
    pts_tensor_t *xt = NULL, *yt = NULL;
    OK(pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 1, x, sizeof x, &xt));
    OK(pts_model_forward(m, xt, &yt));
    OK(pts_tensor_copy_to_buffer(yt, y, sizeof y));
    CHECK(y[0] == 1 && y[1] == 2 && y[2] == 3);
    pts_tensor_free(xt);
    pts_tensor_free(yt);
    check_threaded_forward(m, 3); /* serialized or concurrent: the same outputs */
    pts_model_free(m);
  }
  pts_registry_free(r);
  CHECK(instances_created == instances_finalized);
}

/* ---- Extra training state (docs/FORMAT.md 11.3): tracked objects ---- */

/* A C object whose state a container saves: a step count and a weight. */
typedef struct {
  int64_t count;
  float weight[3];
  const char *fail_in; /* the callback that returns an error, or NULL */
  int *freed;          /* incremented by free_user_data */
} ema_t;

static pts_error_t *ema_get_state(void *user_data, pts_state_t *state) {
  ema_t *ema = user_data;
  if (ema->fail_in != NULL && strcmp(ema->fail_in, "get_state") == 0) {
    return pts_error_new(0, "the EMA is not ready");
  }
  char json[128];
  snprintf(json, sizeof json,
           "{\"count\": %lld, \"weight\": {\"__type__\": \"tensor\", \"name\": \"weight\"}}",
           (long long)ema->count);
  pts_error_t *err = pts_state_set_value_json(state, json);
  if (err != NULL) return err;
  int64_t shape[1] = {3};
  pts_tensor_t *t = NULL;
  err = pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 1, ema->weight, sizeof ema->weight, &t);
  if (err != NULL) return err;
  err = pts_state_add_tensor(state, "weight", t);
  pts_tensor_free(t);
  return err;
}

/* Reads the state's count and weight, checked; writes them if `into`. */
static pts_error_t *ema_read(const pts_state_t *state, ema_t *into) {
  int64_t count = 0;
  pts_error_t *err = pts_state_i64_at(state, "count", &count);
  if (err != NULL) return err;
  pts_tensor_t *t = NULL;
  err = pts_state_tensor_at(state, "weight", &t);
  if (err != NULL) return err;
  size_t nbytes = 0;
  pts_dtype_t dtype = 0;
  err = pts_tensor_nbytes(t, &nbytes);
  if (err == NULL) err = pts_tensor_dtype(t, &dtype);
  if (err == NULL && (dtype != PTS_DTYPE_F32 || nbytes != sizeof into->weight)) {
    err = pts_error_new(PTS_ERROR_INVALID_STATE, "weight is not 3 float32 values");
  }
  if (err == NULL && into != NULL) {
    err = pts_tensor_copy_to_buffer(t, into->weight, sizeof into->weight);
    into->count = count;
  }
  pts_tensor_free(t);
  return err;
}

static pts_error_t *ema_check_state(void *user_data, const pts_state_t *state) {
  ema_t *ema = user_data;
  if (ema->fail_in != NULL && strcmp(ema->fail_in, "check_state") == 0) {
    return pts_error_new(PTS_ERROR_INVALID_STATE, "count is out of range");
  }
  return ema_read(state, NULL);
}

static pts_error_t *ema_load_state(void *user_data, const pts_state_t *state) {
  return ema_read(state, user_data);
}

static void ema_free(void *user_data) {
  ema_t *ema = user_data;
  (*ema->freed)++;
  free(ema);
}

static pts_stateful_t ema_object(const char *class_name, int64_t count, float w0,
                                 const char *fail_in, int *freed) {
  ema_t *ema = calloc(1, sizeof *ema);
  ema->count = count;
  ema->weight[0] = w0;
  ema->weight[1] = w0 + 1;
  ema->weight[2] = w0 + 2;
  ema->fail_in = fail_in;
  ema->freed = freed;
  pts_stateful_t object = {class_name,     ema,     ema_get_state, ema_check_state,
                           ema_load_state, ema_free};
  return object;
}

static const char *mlp_kwargs = "{\"in_dim\": 4, \"hidden_dim\": 8, \"n_classes\": 3}";

/* A new container over the built-in classes tracking "rng", "counters"
 * (from `counters`) and "ema" (an ema_t, whose pointer goes to `*ema`). */
static pts_container_t *tracking_container(const char *counters, int64_t count, float w0,
                                           int *freed, ema_t **ema) {
  pts_container_t *c = NULL;
  OK(pts_container_new(NULL, &c));
  if (c == NULL) return NULL;
  OK(pts_container_track_rng(c, "rng"));
  OK(pts_container_track_counters(c, "counters", counters));
  pts_stateful_t object = ema_object("c_test.EMA", count, w0, NULL, freed);
  *ema = object.user_data;
  OK(pts_container_track(c, "ema", &object));
  return c;
}

/* Whether no file in the scratch directory starts with `prefix`. */
static bool no_file_with_prefix(const char *prefix) {
  DIR *dir = opendir(scratch_dir);
  if (dir == NULL) return false;
  bool none = true;
  for (struct dirent *e = readdir(dir); e != NULL; e = readdir(dir)) {
    if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) none = false;
  }
  closedir(dir);
  return none;
}

static void test_extra_state_round_trip(void) {
  int freed = 0;
  ema_t *ema = NULL;
  pts_container_t *c = tracking_container("{\"step\": 30, \"epoch\": 2}", 7, 0.5f, &freed, &ema);
  if (c == NULL) return;
  OK(pts_container_initialize(c, "pytorch_saver.models.MLP", mlp_kwargs, "torch.optim.SGD",
                              "{\"lr\": 0.1}", NULL, NULL));
  int64_t v = 0;
  OK(pts_container_counter_increment(c, "counters", "step", &v));
  CHECK(v == 31);
  OK(pts_container_counter_set(c, "counters", "epoch", 3));
  char *names = NULL;
  OK(pts_container_tracked_names_json(c, &names));
  CHECK(names != NULL && strcmp(names, "[\"rng\",\"counters\",\"ema\"]") == 0);
  pts_string_free(names);
  char *path = NULL;
  OK(pts_container_save(c, scratch_dir, "extra", NULL, &path));
  if (path == NULL) {
    pts_container_free(c);
    return;
  }

  /* What the generator draws after the save: an MLP's initial weights. */
  pts_container_t *drawn = NULL;
  OK(pts_container_new(NULL, &drawn));
  OK(pts_container_initialize(drawn, "pytorch_saver.models.MLP", mlp_kwargs, NULL, NULL, NULL,
                              NULL));

  /* The file holds the entries' tensors under <entry>.<name>. */
  pts_checkpoint_t *ckpt = NULL;
  OK(pts_checkpoint_open(path, &ckpt));
  size_t count = 0;
  OK(pts_checkpoint_tensor_count(ckpt, PTS_MEMBER_EXTRA, &count));
  CHECK(count == 2);
  pts_dtype_t dtype = 0;
  const int64_t *shape = NULL;
  size_t ndim = 0, nbytes = 0;
  OK(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_EXTRA, "ema.weight", &dtype, &shape, &ndim,
                                &nbytes));
  CHECK(dtype == PTS_DTYPE_F32 && ndim == 1 && nbytes == 12);
  OK(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_EXTRA, "rng.torch.cpu", &dtype, &shape, &ndim,
                                &nbytes));
  CHECK(dtype == PTS_DTYPE_U8);
  pts_checkpoint_free(ckpt);

  /* A fresh container tracking the same names gets every state back,
   * the RNG's included: the next MLP draws the same weights. */
  int freed2 = 0;
  ema_t *ema2 = NULL;
  pts_container_t *fresh = tracking_container(NULL, 0, 9.0f, &freed2, &ema2);
  char *meta = NULL;
  OK(pts_container_load_into(fresh, path, NULL, &meta));
  pts_string_free(meta);
  OK(pts_container_counter_get(fresh, "counters", "step", &v));
  CHECK(v == 31);
  OK(pts_container_counter_get(fresh, "counters", "epoch", &v));
  CHECK(v == 3);
  FAILS(pts_container_counter_get(fresh, "counters", "nope", &v), PTS_ERROR_NOT_FOUND,
        "no counter \"nope\"");
  CHECK(ema2->count == 7 && ema2->weight[0] == 0.5f && ema2->weight[2] == 2.5f);
  CHECK(same_parameters(fresh, c));
  pts_container_t *redrawn = NULL;
  OK(pts_container_new(NULL, &redrawn));
  OK(pts_container_initialize(redrawn, "pytorch_saver.models.MLP", mlp_kwargs, NULL, NULL, NULL,
                              NULL));
  CHECK(same_parameters(redrawn, drawn));

  /* A restore into the same objects does the same. */
  ema2->count = 100;
  OK(pts_container_counter_set(fresh, "counters", "step", 0));
  OK(pts_container_restore(fresh, path, &meta));
  pts_string_free(meta);
  CHECK(ema2->count == 7);
  OK(pts_container_counter_get(fresh, "counters", "step", &v));
  CHECK(v == 31);

  /* Untracking drops the object: its user data is freed. */
  OK(pts_container_untrack(fresh, "ema"));
  CHECK(freed2 == 1);
  FAILS(pts_container_untrack(fresh, "ema"), PTS_ERROR_USAGE, "no object is tracked as \"ema\"");
  FAILS(pts_container_counter_get(fresh, "rng", "step", &v), PTS_ERROR_USAGE,
        "class pytorch_saver.RNG");

  pts_container_free(redrawn);
  pts_container_free(drawn);
  pts_container_free(fresh);
  pts_container_free(c);
  CHECK(freed == 1);
  pts_string_free(path);
}

static void test_extra_state_errors(void) {
  int freed = 0;
  ema_t *ema = NULL;
  pts_container_t *c = tracking_container("{\"step\": 1}", 1, 0.0f, &freed, &ema);
  if (c == NULL) return;
  OK(pts_container_initialize(c, "pytorch_saver.models.MLP", mlp_kwargs, NULL, NULL, NULL, NULL));

  /* Tracking: names are unique, the table complete; user data is freed
   * whatever the outcome. */
  int freed_dup = 0;
  pts_stateful_t dup = ema_object("c_test.EMA", 0, 0, NULL, &freed_dup);
  FAILS(pts_container_track(c, "ema", &dup), PTS_ERROR_DUPLICATE_NAME, "ema");
  CHECK(freed_dup == 1);
  pts_stateful_t incomplete = ema_object("c_test.EMA", 0, 0, NULL, &freed_dup);
  incomplete.check_state = NULL;
  FAILS(pts_container_track(c, "other", &incomplete), PTS_ERROR_NULL_ARGUMENT,
        "object->check_state");
  CHECK(freed_dup == 2);
  FAILS(pts_container_track(c, "other", NULL), PTS_ERROR_NULL_ARGUMENT, "object");
  FAILS(pts_container_track_rng(c, ""), PTS_ERROR_USAGE, "non-empty name");
  FAILS(pts_container_track_counters(c, "bad", "{\"step\": 1.5}"), PTS_ERROR_INVALID_ARGUMENT,
        "counter \"step\" is 1.5");
  FAILS(pts_container_track_counters(c, "bad", "{\"a\": 1, \"a\": 2}"), PTS_ERROR_INVALID_JSON,
        "duplicate key");
  FAILS(pts_container_counter_set(c, "ema", "step", 1), PTS_ERROR_USAGE, "class c_test.EMA");

  /* A get_state error is a typed error naming the entry, and no file. */
  int freed_bad = 0;
  pts_stateful_t failing = ema_object("c_test.EMA", 0, 0, "get_state", &freed_bad);
  OK(pts_container_track(c, "broken", &failing));
  char *path = NULL;
  pts_error_t *err = pts_container_save(c, scratch_dir, "extra_fail", NULL, &path);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_CALLBACK &&
        strcmp(pts_error_kind(err), "Callback") == 0 &&
        strstr(pts_error_message(err), "get_state of the object tracked as \"broken\"") != NULL &&
        strstr(pts_error_message(err), "the EMA is not ready") != NULL);
  pts_error_free(err);
  CHECK(path == NULL);
  CHECK(no_file_with_prefix("extra_fail"));
  OK(pts_container_untrack(c, "broken"));
  CHECK(freed_bad == 1);

  OK(pts_container_save(c, scratch_dir, "extra_errors", NULL, &path));
  if (path == NULL) {
    pts_container_free(c);
    return;
  }
  char *meta = NULL;

  /* A check_state error keeps its code and names the entry; nothing is
   * loaded (the counters keep their value). */
  pts_container_t *refusing = NULL;
  OK(pts_container_new(NULL, &refusing));
  OK(pts_container_track_counters(refusing, "counters", "{\"step\": 99}"));
  pts_stateful_t refuse = ema_object("c_test.EMA", 0, 0, "check_state", &freed_bad);
  OK(pts_container_track(refusing, "ema", &refuse));
  FAILS(pts_container_load_into(refusing, path, NULL, &meta), PTS_ERROR_INVALID_STATE,
        "__pytorch_saver__.extra.ema.state: count is out of range");
  int64_t v = 0;
  OK(pts_container_counter_get(refusing, "counters", "step", &v));
  CHECK(v == 99);
  size_t n = 1;
  FAILS(pts_container_parameter_count(refusing, &n), PTS_ERROR_NOT_INITIALIZED, "");
  pts_container_free(refusing);
  CHECK(freed_bad == 2);

  /* Another class under the name, or a name the file lacks. */
  pts_container_t *other = NULL;
  OK(pts_container_new(NULL, &other));
  pts_stateful_t wrong = ema_object("c_test.Other", 0, 0, NULL, &freed_bad);
  OK(pts_container_track(other, "ema", &wrong));
  FAILS(pts_container_load_into(other, path, NULL, &meta), PTS_ERROR_STATE_MISMATCH,
        "of class c_test.EMA, the tracked object of class c_test.Other");
  OK(pts_container_untrack(other, "ema"));
  OK(pts_container_track_rng(other, "rng_missing"));
  FAILS(pts_container_load_into(other, path, NULL, &meta), PTS_ERROR_STATE_MISMATCH,
        "no extra-state entry of that name");
  OK(pts_container_untrack(other, "rng_missing"));
  OK(pts_container_load_into(other, path, NULL, &meta));
  pts_string_free(meta);
  pts_container_free(other);

  pts_string_free(path);
  pts_container_free(c);
  CHECK(freed == 1);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s GOLDEN_DIR SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  snprintf(golden_dir, sizeof golden_dir, "%s", argv[1]);
  snprintf(scratch_dir, sizeof scratch_dir, "%s", argv[2]);

  test_version();
  test_checkpoint_reading();
  test_golden_v2_typed_kwargs_and_extra();
  test_golden_v2_rust_extra();
  test_golden_v2_schedulers();
  test_bad_files();
  test_mlp_forward_matches_rust();
  test_container_life_cycle();
  test_initialize_errors();
  test_tensor_errors();
  test_null_arguments();
  test_c_registered_model();
  test_callback_errors_keep_ownership_rules();
  test_load_options();
  test_load_ex_and_restore_ex();
  test_verify_off_skips_tensor_crcs();
  test_inference_model();
  test_tensor_empty();
  test_c_model_thread_safety();
  test_extra_state_round_trip();
  test_extra_state_errors();

  printf("%d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
