/*
 * LBFGS through the C ABI: pts_container_step_closure with a C callback
 * that computes the loss and the gradients of a small linear regression
 * itself (pts_tensor_set_grad), on torch.nn.Linear(3, 1):
 *
 * - the loss falls far below its start;
 * - a run saved after 5 steps, loaded and continued for 5 more equals 10
 *   uninterrupted steps bit for bit (parameters and every step's loss);
 * - an error the callback returns comes back from the step as the same
 *   object; pts_container_step refuses LBFGS (it needs a closure); inside
 *   the callback the optimizer is lent to the step.
 *
 * Usage: test_lbfgs SCRATCH_DIR
 */
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checks.h"
#include "pytorch_saver.h"

#define ROWS 16

/* The data: y = 1.5 x0 - 2 x1 + 0.5 x2 + 0.25, x on a fixed grid. */
static float xs[ROWS][3];
static float ys[ROWS];

static void make_data(void) {
  for (int i = 0; i < ROWS; i++) {
    xs[i][0] = (float)(i % 4) - 1.5f;
    xs[i][1] = (float)(i / 4) * 0.5f - 0.75f;
    xs[i][2] = (float)((i * 7) % 5) * 0.3f - 0.6f;
    ys[i] = 1.5f * xs[i][0] - 2.0f * xs[i][1] + 0.5f * xs[i][2] + 0.25f;
  }
}

/* What the callback needs: the parameter handles and a call count. */
struct regression {
  pts_container_t *container;
  pts_tensor_t *weight; /* [1, 3] */
  pts_tensor_t *bias;   /* [1] */
  int calls;
  bool fail;     /* return an error from the next call */
  bool re_enter; /* try pts_container_step from inside */
  pts_error_t *returned;
  pts_error_code_t re_entry_code;
};

static pts_error_t *grad_of(pts_tensor_t *param, const float *values, size_t n, int64_t *shape,
                            size_t ndim) {
  pts_tensor_t *g = NULL;
  pts_error_t *err =
      pts_tensor_from_buffer(PTS_DTYPE_F32, shape, ndim, values, n * sizeof(float), &g);
  if (err != NULL) return err;
  err = pts_tensor_set_grad(param, NULL); /* zero_grad: None */
  if (err == NULL) err = pts_tensor_set_grad(param, g);
  pts_tensor_free(g);
  return err;
}

/* The closure: MSE of x w^T + b against y, and its gradient. */
static pts_error_t *mse_closure(void *user_data, double *loss) {
  struct regression *r = user_data;
  r->calls++;
  if (r->fail) {
    r->returned = pts_error_new(PTS_ERROR_CALLBACK, "the data loader is empty");
    return r->returned;
  }
  if (r->re_enter) {
    pts_error_t *err = pts_container_step(r->container);
    r->re_entry_code = pts_error_code(err);
    pts_error_free(err);
  }
  float w[3], b[1];
  pts_error_t *err = pts_tensor_copy_to_buffer(r->weight, w, sizeof w);
  if (err == NULL) err = pts_tensor_copy_to_buffer(r->bias, b, sizeof b);
  if (err != NULL) return err;
  float gw[3] = {0, 0, 0}, gb[1] = {0};
  float sum = 0.0f;
  for (int i = 0; i < ROWS; i++) {
    float e = w[0] * xs[i][0] + w[1] * xs[i][1] + w[2] * xs[i][2] + b[0] - ys[i];
    sum += e * e;
    for (int j = 0; j < 3; j++) gw[j] += 2.0f * e * xs[i][j] / ROWS;
    gb[0] += 2.0f * e / ROWS;
  }
  int64_t wshape[2] = {1, 3}, bshape[1] = {1};
  err = grad_of(r->weight, gw, 3, wshape, 2);
  if (err == NULL) err = grad_of(r->bias, gb, 1, bshape, 1);
  if (err != NULL) return err;
  *loss = (double)(sum / ROWS);
  return NULL;
}

static void attach(struct regression *r, pts_container_t *c) {
  memset(r, 0, sizeof *r);
  r->container = c;
  for (size_t i = 0; i < 2; i++) {
    const char *name = NULL;
    pts_tensor_t *t = NULL;
    OK(pts_container_parameter(c, i, &name, &t));
    if (name != NULL && strcmp(name, "weight") == 0)
      r->weight = t;
    else if (name != NULL && strcmp(name, "bias") == 0)
      r->bias = t;
    else
      pts_tensor_free(t);
  }
  CHECK(r->weight != NULL && r->bias != NULL);
}

static void detach(struct regression *r) {
  pts_tensor_free(r->weight);
  pts_tensor_free(r->bias);
}

/* `steps` steps; each step's first loss into losses. */
static void train(pts_container_t *c, int steps, double *losses) {
  struct regression r;
  attach(&r, c);
  for (int s = 0; s < steps; s++) OK(pts_container_step_closure(c, mse_closure, &r, &losses[s]));
  CHECK(r.calls >= steps);
  detach(&r);
}

static void params_of(pts_container_t *c, float out[4]) {
  struct regression r;
  attach(&r, c);
  OK(pts_tensor_copy_to_buffer(r.weight, out, 3 * sizeof(float)));
  OK(pts_tensor_copy_to_buffer(r.bias, out + 3, sizeof(float)));
  detach(&r);
}

static pts_container_t *load(const char *path) {
  pts_container_t *c = NULL;
  char *meta = NULL;
  OK(pts_container_load(NULL, path, &c, &meta));
  pts_string_free(meta);
  return c;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  make_data();

  pts_container_t *straight = NULL;
  OK(pts_container_new(NULL, &straight));
  OK(pts_container_initialize(straight, "torch.nn.Linear",
                              "{\"in_features\": 3, \"out_features\": 1}", "torch.optim.LBFGS",
                              "{\"line_search_fn\": \"strong_wolfe\", \"history_size\": 3, "
                              "\"max_iter\": 5}",
                              NULL, NULL));
  char *init_path = NULL, *half_path = NULL;
  OK(pts_container_save(straight, dir, "init", NULL, &init_path));

  /* LBFGS needs a closure. */
  pts_error_t *err = pts_container_step(straight);
  CHECK(err != NULL && pts_error_code(err) == PTS_ERROR_USAGE &&
        strstr(pts_error_message(err), "closure") != NULL);
  pts_error_free(err);
  double loss = 0.0;
  err = pts_container_step_closure(straight, NULL, NULL, &loss);
  CHECK(pts_error_code(err) == PTS_ERROR_NULL_ARGUMENT);
  pts_error_free(err);

  /* Ten uninterrupted steps: the loss falls. */
  double straight_losses[10], resumed_losses[10];
  train(straight, 10, straight_losses);
  CHECK(straight_losses[9] < straight_losses[0] * 1e-3);

  /* Five, save, load, five more: the same, bit for bit. */
  pts_container_t *first = load(init_path);
  train(first, 5, resumed_losses);
  OK(pts_container_save(first, dir, "half", NULL, &half_path));
  pts_container_free(first);
  pts_container_t *resumed = load(half_path);
  train(resumed, 5, resumed_losses + 5);
  CHECK(memcmp(straight_losses, resumed_losses, sizeof straight_losses) == 0);
  float a[4], b[4];
  params_of(straight, a);
  params_of(resumed, b);
  CHECK(memcmp(a, b, sizeof a) == 0);

  /* The callback's error comes back as the same object; inside the
   * callback the optimizer is lent to the step. */
  struct regression r;
  attach(&r, resumed);
  r.re_enter = true;
  OK(pts_container_step_closure(resumed, mse_closure, &r, &loss));
  CHECK(r.re_entry_code == PTS_ERROR_USAGE);
  r.re_enter = false;
  r.fail = true;
  err = pts_container_step_closure(resumed, mse_closure, &r, &loss);
  CHECK(err != NULL && err == r.returned);
  CHECK(strcmp(pts_error_message(err), "the data loader is empty") == 0);
  pts_error_free(err);
  r.fail = false;
  OK(pts_container_step_closure(resumed, mse_closure, &r, &loss)); /* the optimizer is back */
  detach(&r);

  pts_string_free(init_path);
  pts_string_free(half_path);
  pts_container_free(straight);
  pts_container_free(resumed);
  printf("test_lbfgs: %d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
