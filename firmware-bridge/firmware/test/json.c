/* A small JSON reader for the test programs; see json.h. */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *s;
  size_t i;
  char *err;
  size_t err_len;
  int depth;
} parser_t;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "json: out of memory\n");
    exit(2);
  }
  return p;
}

static json_t *fail(parser_t *p, const char *what) {
  if (p->err && p->err_len) snprintf(p->err, p->err_len, "json: %s at offset %zu", what, p->i);
  return NULL;
}

static void skip_ws(parser_t *p) {
  while (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r') p->i++;
}

static json_t *new_value(json_kind_t kind) {
  json_t *v = (json_t *)xmalloc(sizeof *v);
  memset(v, 0, sizeof *v);
  v->kind = kind;
  return v;
}

static json_t *parse_value(parser_t *p);

static int hex4(const char *s, unsigned *out) {
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    char c = s[k];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

/* Parses a string at p->s[p->i] == '"' into a malloc'd buffer. */
static char *parse_string_raw(parser_t *p, size_t *len_out) {
  p->i++; /* opening quote */
  size_t cap = 16, n = 0;
  char *out = (char *)xmalloc(cap);
  for (;;) {
    unsigned char c = (unsigned char)p->s[p->i];
    if (c == 0 || c < 0x20) {
      free(out);
      fail(p, "unterminated string");
      return NULL;
    }
    if (n + 4 >= cap) {
      cap *= 2;
      char *bigger = (char *)realloc(out, cap);
      if (!bigger) {
        free(out);
        fprintf(stderr, "json: out of memory\n");
        exit(2);
      }
      out = bigger;
    }
    p->i++;
    if (c == '"') break;
    if (c != '\\') {
      out[n++] = (char)c;
      continue;
    }
    char e = p->s[p->i++];
    switch (e) {
      case '"': out[n++] = '"'; break;
      case '\\': out[n++] = '\\'; break;
      case '/': out[n++] = '/'; break;
      case 'b': out[n++] = '\b'; break;
      case 'f': out[n++] = '\f'; break;
      case 'n': out[n++] = '\n'; break;
      case 'r': out[n++] = '\r'; break;
      case 't': out[n++] = '\t'; break;
      case 'u': {
        unsigned cp;
        if (hex4(p->s + p->i, &cp) != 0 || cp == 0) {
          free(out);
          fail(p, "bad \\u escape");
          return NULL;
        }
        p->i += 4;
        if (cp < 0x80) {
          out[n++] = (char)cp;
        } else if (cp < 0x800) {
          out[n++] = (char)(0xC0 | (cp >> 6));
          out[n++] = (char)(0x80 | (cp & 0x3F));
        } else {
          out[n++] = (char)(0xE0 | (cp >> 12));
          out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
          out[n++] = (char)(0x80 | (cp & 0x3F));
        }
        break;
      }
      default:
        free(out);
        fail(p, "bad escape");
        return NULL;
    }
  }
  out[n] = 0;
  *len_out = n;
  return out;
}

static json_t *parse_container(parser_t *p, int is_object) {
  json_t *v = new_value(is_object ? JSON_OBJECT : JSON_ARRAY);
  size_t cap = 0;
  char close = is_object ? '}' : ']';
  p->i++;
  skip_ws(p);
  if (p->s[p->i] == close) {
    p->i++;
    return v;
  }
  for (;;) {
    char *key = NULL;
    if (is_object) {
      skip_ws(p);
      if (p->s[p->i] != '"') {
        json_free(v);
        return fail(p, "expected a key");
      }
      size_t klen;
      key = parse_string_raw(p, &klen);
      if (!key) {
        json_free(v);
        return NULL;
      }
      skip_ws(p);
      if (p->s[p->i] != ':') {
        free(key);
        json_free(v);
        return fail(p, "expected ':'");
      }
      p->i++;
    }
    json_t *item = parse_value(p);
    if (!item) {
      free(key);
      json_free(v);
      return NULL;
    }
    if (v->len == cap) {
      cap = cap ? cap * 2 : 8;
      json_t **items = (json_t **)realloc(v->items, cap * sizeof *items);
      char **keys = (char **)realloc(v->keys, cap * sizeof *keys);
      if (!items || !keys) {
        fprintf(stderr, "json: out of memory\n");
        exit(2);
      }
      v->items = items;
      v->keys = keys;
    }
    v->items[v->len] = item;
    v->keys[v->len] = key;
    v->len++;
    skip_ws(p);
    if (p->s[p->i] == ',') {
      p->i++;
      continue;
    }
    if (p->s[p->i] == close) {
      p->i++;
      return v;
    }
    json_free(v);
    return fail(p, "expected ',' or a closing bracket");
  }
}

static json_t *parse_value(parser_t *p) {
  skip_ws(p);
  char c = p->s[p->i];
  if (c == '{' || c == '[') {
    if (++p->depth > 64) return fail(p, "nesting too deep");
    json_t *v = parse_container(p, c == '{');
    p->depth--;
    return v;
  }
  if (c == '"') {
    json_t *v = new_value(JSON_STRING);
    v->string = parse_string_raw(p, &v->len);
    if (!v->string) {
      free(v);
      return NULL;
    }
    return v;
  }
  if (strncmp(p->s + p->i, "true", 4) == 0 || strncmp(p->s + p->i, "false", 5) == 0) {
    json_t *v = new_value(JSON_BOOL);
    v->number = c == 't';
    p->i += c == 't' ? 4 : 5;
    return v;
  }
  if (strncmp(p->s + p->i, "null", 4) == 0) {
    p->i += 4;
    return new_value(JSON_NULL);
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    char *end = NULL;
    double d = strtod(p->s + p->i, &end);
    if (end == p->s + p->i) return fail(p, "bad number");
    p->i = (size_t)(end - p->s);
    json_t *v = new_value(JSON_NUMBER);
    v->number = d;
    return v;
  }
  return fail(p, "unexpected character");
}

json_t *json_parse(const char *text, char *err, size_t err_len) {
  parser_t p = {text, 0, err, err_len, 0};
  json_t *v = parse_value(&p);
  if (!v) return NULL;
  skip_ws(&p);
  if (p.s[p.i] != 0) {
    json_free(v);
    return fail(&p, "trailing characters");
  }
  return v;
}

json_t *json_parse_file(const char *path, char *err, size_t err_len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, err_len, "cannot open %s", path);
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (size < 0) {
    fclose(f);
    snprintf(err, err_len, "cannot size %s", path);
    return NULL;
  }
  char *buf = (char *)xmalloc((size_t)size + 1);
  size_t got = fread(buf, 1, (size_t)size, f);
  fclose(f);
  buf[got] = 0;
  json_t *v = json_parse(buf, err, err_len);
  free(buf);
  return v;
}

const json_t *json_get(const json_t *obj, const char *key) {
  if (!obj || obj->kind != JSON_OBJECT) return NULL;
  for (size_t i = 0; i < obj->len; i++)
    if (strcmp(obj->keys[i], key) == 0) return obj->items[i];
  return NULL;
}

void json_free(json_t *v) {
  if (!v) return;
  for (size_t i = 0; i < v->len && v->items; i++) {
    json_free(v->items[i]);
    if (v->keys) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->string);
  free(v);
}
