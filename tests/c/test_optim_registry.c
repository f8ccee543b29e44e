/*
 * A user optimizer class from C (pts_registry_register_optimizer): a
 * sign-momentum step written in plain C over the tensor handles, with a
 * momentum buffer of each parameter's shape and a rank-0 step counter.
 *
 * - 12 steps, save, load into a fresh container over the same registry,
 *   12 more steps: the saved model and optimizer state equal those of 24
 *   uninterrupted steps byte for byte; the file names the class and its
 *   kwargs;
 * - kwargs are checked (unknown kwarg, wrong type, the class's own group
 *   check), a step's error reaches the caller with its message, a file
 *   naming an unregistered optimizer is PTS_ERROR_UNKNOWN_NAME listing the
 *   registered ones, a torch.optim name cannot be registered;
 * - every user_data is freed exactly once.
 *
 * Usage: test_optim_registry SCRATCH_DIR
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checks.h"
#include "pytorch_saver.h"

#define SIGN_MOMENTUM "my_project.SignMomentum"
#define MLP "pytorch_saver.models.MLP"
#define MLP_KWARGS "{\"in_dim\": 4, \"hidden_dim\": 8, \"n_classes\": 3}"
#define STEP_LR "torch.optim.lr_scheduler.StepLR"
#define STEP_LR_KWARGS "{\"step_size\": 5, \"gamma\": 0.5}"

static int user_data_freed = 0;

static void free_user_data(void *data) {
  user_data_freed++;
  free(data);
}

/* A call that must fail with `code` and a message containing `needle`. */
static void fails(pts_error_t *err, pts_error_code_t code, const char *needle, int line) {
  checks++;
  if (err == NULL) {
    failures++;
    fprintf(stderr, "line %d: expected error %u, got success\n", line, code);
    return;
  }
  if (pts_error_code(err) != code || strstr(pts_error_message(err), needle) == NULL) {
    failures++;
    fprintf(stderr, "line %d: expected [%u] ...%s..., got [%u] %s\n", line, code, needle,
            pts_error_code(err), pts_error_message(err));
  }
  pts_error_free(err);
}
#define FAILS(call, code, needle) fails((call), (code), (needle), __LINE__)

/* A tensor's float32 values, malloc'ed; *count elements. */
static float *values(const pts_tensor_t *t, size_t *count) {
  size_t nbytes = 0;
  pts_error_t *err = pts_tensor_nbytes(t, &nbytes);
  if (err != NULL) return pts_error_free(err), NULL;
  float *v = malloc(nbytes > 0 ? nbytes : 1);
  err = pts_tensor_copy_to_buffer(t, v, nbytes);
  if (err != NULL) return pts_error_free(err), free(v), NULL;
  *count = nbytes / sizeof(float);
  return v;
}

/* A new float32 tensor of `like`'s shape holding `v`. */
static pts_error_t *tensor_like(const pts_tensor_t *like, const float *v, size_t count,
                                pts_tensor_t **out) {
  int64_t dims[8];
  size_t ndim = 0;
  pts_error_t *err = pts_tensor_ndim(like, &ndim);
  if (err == NULL && ndim > 8)
    return pts_error_new(PTS_ERROR_INVALID_ARGUMENT, "too many dimensions");
  if (err == NULL) err = pts_tensor_shape(like, dims, 8);
  if (err == NULL)
    err = pts_tensor_from_buffer(PTS_DTYPE_F32, dims, ndim, v, count * sizeof(float), out);
  return err;
}

/* The step: m = beta m + (1 - beta) g; p -= lr / sqrt(step) * sign(m). */
static pts_error_t *sign_momentum_step(void *user_data, const pts_optim_group_t *group,
                                       pts_tensor_t *param, const pts_tensor_t *grad,
                                       pts_optim_state_t *state) {
  (void)user_data;
  double lr = 0, beta = 0;
  pts_error_t *err = pts_optim_group_f64(group, "lr", &lr);
  if (err == NULL) err = pts_optim_group_f64(group, "beta", &beta);
  if (err != NULL) return err;
  size_t n = 0, n_grad = 0, n_buf = 0;
  float *p = values(param, &n);
  float *g = values(grad, &n_grad);
  float *m = NULL;
  float step = 0;
  pts_tensor_t *buf = NULL, *counter = NULL;
  err = pts_optim_state_get(state, "momentum_buffer", &buf);
  if (err == NULL) err = pts_optim_state_get(state, "step", &counter);
  if (err == NULL && buf == NULL) { /* the first step: create the state */
    m = calloc(n > 0 ? n : 1, sizeof(float));
    err = tensor_like(param, m, n, &buf);
    if (err == NULL) err = pts_optim_state_set(state, "momentum_buffer", buf);
    if (err == NULL)
      err = pts_tensor_from_buffer(PTS_DTYPE_F32, NULL, 0, &step, sizeof step, &counter);
    if (err == NULL) err = pts_optim_state_set(state, "step", counter);
  } else if (err == NULL) {
    m = values(buf, &n_buf);
    if (err == NULL) err = pts_tensor_copy_to_buffer(counter, &step, sizeof step);
  }
  if (err == NULL && (p == NULL || g == NULL || m == NULL || n != n_grad)) {
    err = pts_error_new(PTS_ERROR_CALLBACK, "sign momentum: could not read its tensors");
  }
  if (err == NULL) {
    step += 1.0f;
    float scale = (float)(lr / sqrt((double)step));
    for (size_t i = 0; i < n; i++) {
      m[i] = m[i] * (float)beta + g[i] * (float)(1.0 - beta);
      p[i] -= scale * (float)((m[i] > 0) - (m[i] < 0));
    }
    err = pts_tensor_copy_from_buffer(buf, m, n * sizeof(float));
    if (err == NULL) err = pts_tensor_copy_from_buffer(counter, &step, sizeof step);
    if (err == NULL) err = pts_tensor_copy_from_buffer(param, p, n * sizeof(float));
  }
  pts_tensor_free(buf);
  pts_tensor_free(counter);
  free(p);
  free(g);
  free(m);
  return err;
}

static pts_error_t *check_beta(void *user_data, const pts_optim_group_t *group) {
  (void)user_data;
  double beta = 0;
  pts_error_t *err = pts_optim_group_f64(group, "beta", &beta);
  if (err != NULL) return err;
  return beta >= 0 && beta < 1 ? NULL
                               : pts_error_new(PTS_ERROR_INVALID_KWARGS, "beta must be in [0, 1)");
}

static pts_error_t *failing_step(void *user_data, const pts_optim_group_t *group,
                                 pts_tensor_t *param, const pts_tensor_t *grad,
                                 pts_optim_state_t *state) {
  (void)user_data, (void)group, (void)param, (void)grad;
  pts_tensor_t *t = NULL;
  float zero = 0;
  pts_error_t *err = pts_tensor_from_buffer(PTS_DTYPE_F32, NULL, 0, &zero, sizeof zero, &t);
  if (err != NULL) return err;
  err = pts_optim_state_set(state, "exp_avg", t); /* not one of its keys */
  pts_tensor_free(t);
  if (err == NULL) return pts_error_new(PTS_ERROR_CALLBACK, "state_set accepted an undeclared key");
  pts_error_free(err);
  return pts_error_new(PTS_ERROR_CALLBACK, "the step was asked to fail");
}

static const pts_optim_state_key_t SIGN_MOMENTUM_KEYS[2] = {
    {"momentum_buffer", false, true},
    {"step", true, true},
};

static void register_sign_momentum(pts_registry_t *registry) {
  pts_optimizer_class_t cls = {"{\"lr\": 0.01, \"beta\": 0.9}", SIGN_MOMENTUM_KEYS, 2,
                               sign_momentum_step, check_beta};
  OK(pts_registry_register_optimizer(registry, SIGN_MOMENTUM, &cls, malloc(16), free_user_data));
}

/* Gradients of step `step` (the same in every run) added to every
 * parameter, then an optimizer step and a scheduler step. */
static void train(pts_container_t *c, int from, int steps) {
  size_t count = 0;
  OK(pts_container_parameter_count(c, &count));
  for (int step = from; step < from + steps; step++) {
    OK(pts_container_zero_grad(c));
    for (size_t i = 0; i < count; i++) {
      const char *name = NULL;
      pts_tensor_t *param = NULL, *grad = NULL;
      OK(pts_container_parameter(c, i, &name, &param));
      size_t n = 0;
      float *g = values(param, &n);
      CHECK(g != NULL);
      if (g == NULL) {
        pts_tensor_free(param);
        return;
      }
      for (size_t j = 0; j < n; j++) g[j] = sinf(0.37f * (float)j + 0.61f * (float)step + (float)i);
      OK(tensor_like(param, g, n, &grad));
      OK(pts_tensor_backward(param, grad));
      pts_tensor_free(grad);
      pts_tensor_free(param);
      free(g);
    }
    OK(pts_container_step(c));
    OK(pts_container_scheduler_step(c));
  }
}

static pts_container_t *fresh(const pts_registry_t *registry) {
  pts_container_t *c = NULL;
  OK(pts_container_new(registry, &c));
  OK(pts_container_initialize(c, MLP, MLP_KWARGS, SIGN_MOMENTUM, "{\"lr\": 0.05, \"beta\": 0.8}",
                              STEP_LR, STEP_LR_KWARGS));
  return c;
}

/* Whether two files hold the same tensors of `member`, byte for byte. */
static bool same_member(const char *a, const char *b, pts_member_t member) {
  pts_checkpoint_t *ca = NULL, *cb = NULL;
  OK(pts_checkpoint_open(a, &ca));
  OK(pts_checkpoint_open(b, &cb));
  size_t na = 0, nb = 0;
  OK(pts_checkpoint_tensor_count(ca, member, &na));
  OK(pts_checkpoint_tensor_count(cb, member, &nb));
  bool same = ca != NULL && cb != NULL && na == nb && na > 0;
  for (size_t i = 0; same && i < na; i++) {
    const char *name = NULL;
    const uint8_t *da = NULL, *db = NULL;
    size_t la = 0, lb = 0;
    OK(pts_checkpoint_tensor_name(ca, member, i, &name));
    OK(pts_checkpoint_tensor_borrow(ca, member, name, &da, &la));
    OK(pts_checkpoint_tensor_borrow(cb, member, name, &db, &lb));
    same = da != NULL && db != NULL && la == lb && memcmp(da, db, la) == 0;
    if (!same) fprintf(stderr, "tensor %s differs\n", name);
  }
  pts_checkpoint_free(ca);
  pts_checkpoint_free(cb);
  return same;
}

static void test_resume_bit_for_bit(const char *dir) {
  pts_registry_t *registry = NULL;
  OK(pts_registry_new(&registry));
  register_sign_momentum(registry);
  bool has = false;
  OK(pts_registry_contains_optimizer(registry, SIGN_MOMENTUM, &has));
  CHECK(has);

  /* Both runs start from the same initial parameters (C has no seed):
   * the second loads them from a file saved before any step. */
  pts_container_t *straight = fresh(registry);
  char *init = NULL;
  OK(pts_container_save(straight, dir, "init", "{\"step\": 0}", &init));
  pts_container_t *first = NULL;
  char *meta_json = NULL;
  OK(pts_container_load(registry, init, &first, &meta_json));
  pts_string_free(meta_json);
  pts_string_free(init);
  if (first == NULL) return;
  train(straight, 0, 24);
  char *straight_path = NULL;
  OK(pts_container_save(straight, dir, "straight", "{\"step\": 24}", &straight_path));

  train(first, 0, 12);
  char *half = NULL;
  OK(pts_container_save(first, dir, "half", "{\"step\": 12}", &half));
  pts_container_free(first);

  pts_checkpoint_t *ckpt = NULL;
  OK(pts_checkpoint_open(half, &ckpt));
  const char *meta = NULL;
  OK(pts_checkpoint_metadata(ckpt, &meta));
  CHECK(meta != NULL && strstr(meta, "\"class\":\"" SIGN_MOMENTUM "\"") != NULL);
  CHECK(meta != NULL && strstr(meta, "\"optim_kwargs\":{\"lr\":0.05,\"beta\":0.8}") != NULL);
  size_t n_state = 0;
  OK(pts_checkpoint_tensor_count(ckpt, PTS_MEMBER_OPTIMIZER, &n_state));
  CHECK(n_state == 16); /* 8 parameters, 2 keys each */
  pts_checkpoint_free(ckpt);

  pts_container_t *resumed = NULL;
  meta_json = NULL;
  OK(pts_container_load(registry, half, &resumed, &meta_json));
  pts_string_free(meta_json);
  pts_registry_free(registry); /* containers keep their snapshot */
  if (resumed != NULL) {
    train(resumed, 12, 12);
    char *resumed_path = NULL;
    OK(pts_container_save(resumed, dir, "resumed", "{\"step\": 24}", &resumed_path));
    CHECK(resumed_path != NULL && straight_path != NULL);
    if (resumed_path != NULL && straight_path != NULL) {
      CHECK(same_member(straight_path, resumed_path, PTS_MEMBER_MODEL));
      CHECK(same_member(straight_path, resumed_path, PTS_MEMBER_OPTIMIZER));
    }
    double lr_a = 0, lr_b = 1;
    OK(pts_container_lr(straight, 0, &lr_a));
    OK(pts_container_lr(resumed, 0, &lr_b));
    CHECK(lr_a == lr_b && lr_a == 0.05 / 16);
    pts_string_free(resumed_path);
    pts_container_free(resumed);
  }

  /* A registry without the class (with another one) refuses the file,
   * listing what it has. */
  pts_registry_t *other = NULL;
  OK(pts_registry_new(&other));
  pts_optimizer_class_t failing = {"{\"lr\": 1}", SIGN_MOMENTUM_KEYS, 1, failing_step, NULL};
  OK(pts_registry_register_optimizer(other, "my_project.Failing", &failing, malloc(8),
                                     free_user_data));
  pts_container_t *none = NULL;
  meta_json = NULL;
  FAILS(pts_container_load(other, half, &none, &meta_json), PTS_ERROR_UNKNOWN_NAME,
        "my_project.Failing");
  CHECK(none == NULL && meta_json == NULL);

  /* A step's error reaches the caller with its message. */
  pts_container_t *c = NULL;
  OK(pts_container_new(other, &c));
  OK(pts_container_initialize(c, MLP, MLP_KWARGS, "my_project.Failing", NULL, NULL, NULL));
  pts_tensor_t *param = NULL, *grad = NULL;
  const char *name = NULL;
  OK(pts_container_parameter(c, 0, &name, &param));
  float g[32];
  for (int i = 0; i < 32; i++) g[i] = 1;
  OK(tensor_like(param, g, 32, &grad));
  OK(pts_tensor_backward(param, grad));
  FAILS(pts_container_step(c), PTS_ERROR_CALLBACK, "the step was asked to fail");
  pts_tensor_free(grad);
  pts_tensor_free(param);
  pts_container_free(c);
  pts_registry_free(other);

  pts_container_free(straight);
  pts_string_free(straight_path);
  pts_string_free(half);
}

static void test_kwargs_and_registration(void) {
  pts_registry_t *registry = NULL;
  OK(pts_registry_new(&registry));
  register_sign_momentum(registry);
  pts_optimizer_class_t cls = {"{\"lr\": 0.01, \"beta\": 0.9}", SIGN_MOMENTUM_KEYS, 2,
                               sign_momentum_step, NULL};
  FAILS(pts_registry_register_optimizer(registry, SIGN_MOMENTUM, &cls, malloc(8), free_user_data),
        PTS_ERROR_DUPLICATE_NAME, SIGN_MOMENTUM);
  FAILS(pts_registry_register_optimizer(registry, "torch.optim.SignMomentum", &cls, malloc(8),
                                        free_user_data),
        PTS_ERROR_DUPLICATE_NAME, "torch.optim.SignMomentum");
  pts_optimizer_class_t no_lr = {"{\"eta\": 0.01}", NULL, 0, sign_momentum_step, NULL};
  FAILS(pts_registry_register_optimizer(registry, "my_project.NoLr", &no_lr, malloc(8),
                                        free_user_data),
        PTS_ERROR_INVALID_KWARGS, "\"lr\"");
  pts_optimizer_class_t bad_json = {"[1, 2]", NULL, 0, sign_momentum_step, NULL};
  FAILS(pts_registry_register_optimizer(registry, "my_project.BadJson", &bad_json, malloc(8),
                                        free_user_data),
        PTS_ERROR_INVALID_JSON, "hyperparameters_json");
  pts_optimizer_class_t no_step = {"{\"lr\": 0.01}", NULL, 0, NULL, NULL};
  FAILS(pts_registry_register_optimizer(registry, "my_project.NoStep", &no_step, malloc(8),
                                        free_user_data),
        PTS_ERROR_NULL_ARGUMENT, "step");
  FAILS(pts_registry_register_optimizer(NULL, "my_project.X", &cls, malloc(8), free_user_data),
        PTS_ERROR_NULL_ARGUMENT, "registry");
  bool has = true;
  OK(pts_registry_contains_optimizer(registry, "my_project.NoLr", &has));
  CHECK(!has);

  pts_container_t *c = NULL;
  OK(pts_container_new(registry, &c));
  FAILS(pts_container_initialize(c, MLP, MLP_KWARGS, SIGN_MOMENTUM, "{\"momentum\": 0.9}", NULL,
                                 NULL),
        PTS_ERROR_INVALID_KWARGS, "momentum");
  FAILS(pts_container_initialize(c, MLP, MLP_KWARGS, SIGN_MOMENTUM, "{\"beta\": true}", NULL, NULL),
        PTS_ERROR_INVALID_KWARGS, "\"beta\"");
  FAILS(pts_container_initialize(c, MLP, MLP_KWARGS, SIGN_MOMENTUM, "{\"beta\": 1.5}", NULL, NULL),
        PTS_ERROR_INVALID_KWARGS, "beta must be in [0, 1)");
  FAILS(pts_container_initialize(c, MLP, MLP_KWARGS, "my_project.Nobody", NULL, NULL, NULL),
        PTS_ERROR_UNKNOWN_NAME, SIGN_MOMENTUM);
  OK(pts_container_initialize(c, MLP, MLP_KWARGS, SIGN_MOMENTUM, NULL, NULL, NULL));
  pts_container_free(c);
  pts_registry_free(registry);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  test_resume_bit_for_bit(argv[1]);
  CHECK(user_data_freed == 2);
  test_kwargs_and_registration();
  CHECK(user_data_freed == 2 + 7);
  printf("optim_registry: %d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
