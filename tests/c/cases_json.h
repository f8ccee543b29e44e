/*
 * The little JSON the C tests need to read the corpora's case lists
 * (tests/hostile/cases.json, tests/corpus/manifest.json): walk objects and
 * arrays, read strings (escapes decoded). Not a validating parser: the
 * lists come from the repository's own generators, and anything this
 * reader does not expect makes it return NULL (or -1), never guess.
 * Static functions only, for a test's one translation unit.
 */
#ifndef PTS_TESTS_CASES_JSON_H
#define PTS_TESTS_CASES_JSON_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file at `path`, NUL-terminated (free it), or NULL. */
static char *cj_read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  long size = -1;
  if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
  char *buf = size >= 0 && fseek(f, 0, SEEK_SET) == 0 ? malloc((size_t)size + 1) : NULL;
  if (buf != NULL && fread(buf, 1, (size_t)size, f) != (size_t)size) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  if (buf != NULL) buf[size] = '\0';
  return buf;
}

static const char *cj_skip_space(const char *p) {
  while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
  return p;
}

/* The value of the 4 hex digits at `p`, or -1. */
static long cj_hex4(const char *p) {
  long v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

/* Appends code point `cp` to `out` as UTF-8; returns the bytes written. */
static size_t cj_utf8(unsigned long cp, char *out) {
  if (cp < 0x80) return out[0] = (char)cp, 1;
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | (cp >> 12)), out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (cp >> 18)), out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* The JSON string whose opening quote `*p` points to, decoded into a new
 * NUL-terminated string (free it); `*p` moves past the closing quote.
 * NULL for anything that is not a well-formed string, or that holds
 * \u0000 (a C string cannot). */
static char *cj_string(const char **p) {
  const char *s = *p;
  if (*s != '"') return NULL;
  /* Decoding never makes a string longer than its JSON text. */
  size_t cap = 1;
  for (const char *q = s + 1; *q != '"'; q++) {
    if (*q == '\0' || (*q == '\\' && *++q == '\0')) return NULL;
    cap++;
  }
  char *out = malloc(cap + 1), *o = out;
  if (out == NULL) return NULL;
  for (s++; *s != '"'; s++) {
    if (*s != '\\') {
      *o++ = *s;
      continue;
    }
    char e = *++s;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (e != '\0' && e != 'u' && simple != NULL) {
      *o++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
      continue;
    }
    long cp = e == 'u' ? cj_hex4(s + 1) : -1;
    if (cp >= 0xd800 && cp < 0xdc00 && s[5] == '\\' && s[6] == 'u') {
      long low = cj_hex4(s + 7);
      cp = low >= 0xdc00 && low < 0xe000 ? 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00) : -1;
      s += 6;
    }
    if (cp <= 0 || (cp >= 0xd800 && cp < 0xe000)) return free(out), NULL;
    o += cj_utf8((unsigned long)cp, o);
    s += 4;
  }
  *o = '\0';
  *p = s + 1;
  return out;
}

/* Past the JSON value that starts at `p` (after spaces), or NULL. */
static const char *cj_skip_value(const char *p) {
  p = cj_skip_space(p);
  if (*p == '"') {
    for (p++; *p != '"'; p++) {
      if (*p == '\0' || (*p == '\\' && *++p == '\0')) return NULL;
    }
    return p + 1;
  }
  if (*p == '{' || *p == '[') {
    char close = *p == '{' ? '}' : ']';
    p = cj_skip_space(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
      if (close == '}') {
        p = cj_skip_value(p); /* the key */
        if (p == NULL || *(p = cj_skip_space(p)) != ':') return NULL;
        p++;
      }
      if ((p = cj_skip_value(p)) == NULL) return NULL;
      p = cj_skip_space(p);
      if (*p == close) return p + 1;
      if (*p++ != ',') return NULL;
    }
  }
  const char *start = p; /* a number, true, false or null */
  while (*p != '\0' && strchr("+-.0123456789Eaeflnrstu", *p) != NULL) p++;
  return p == start ? NULL : p;
}

/* The value of member `key` of the object that starts at `object` (after
 * spaces), or NULL if it has none or is not an object. */
static const char *cj_member(const char *object, const char *key) {
  const char *p = cj_skip_space(object);
  if (*p++ != '{') return NULL;
  p = cj_skip_space(p);
  if (*p == '}') return NULL;
  for (;;) {
    char *name = cj_string(&p);
    if (name == NULL) return NULL;
    bool found = strcmp(name, key) == 0;
    free(name);
    p = cj_skip_space(p);
    if (*p++ != ':') return NULL;
    p = cj_skip_space(p);
    if (found) return p;
    if ((p = cj_skip_value(p)) == NULL) return NULL;
    p = cj_skip_space(p);
    if (*p++ != ',') return NULL; /* '}': not found; anything else: malformed */
    p = cj_skip_space(p);
  }
}

/* Stores where each element of the array that starts at `array` (after
 * spaces) begins; returns their number, or -1 if it is not an array or
 * has more than `max` elements. */
static int cj_elements(const char *array, const char **out, int max) {
  const char *p = cj_skip_space(array);
  if (*p++ != '[') return -1;
  p = cj_skip_space(p);
  if (*p == ']') return 0;
  for (int n = 0;; n++) {
    if (n == max) return -1;
    out[n] = p;
    if ((p = cj_skip_value(p)) == NULL) return -1;
    p = cj_skip_space(p);
    if (*p == ']') return n + 1;
    if (*p++ != ',') return -1;
    p = cj_skip_space(p);
  }
}

/* The string member `key` of the object at `object`, decoded (free it),
 * or NULL. */
static char *cj_string_member(const char *object, const char *key) {
  const char *p = cj_member(object, key);
  return p == NULL ? NULL : cj_string(&p);
}

#endif
