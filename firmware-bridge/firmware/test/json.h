/*
 * A small JSON reader for the test programs only (reads firmware-bridge/vectors.json).
 * Parses a whole document into a tree (malloc is fine here: this never runs on the MCU).
 * Strict enough for generated files: objects, arrays, strings with the usual escapes
 * (\uXXXX limited to the BMP, encoded as UTF-8), numbers, true, false, null.
 */
#ifndef KEEL_TEST_JSON_H
#define KEEL_TEST_JSON_H

#include <stddef.h>

/* JSON value kinds. */
typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_kind_t;

/* One parsed value; arrays and objects own their children. */
typedef struct json {
  json_kind_t kind;
  double number;       /* JSON_NUMBER; also 0/1 for JSON_BOOL */
  char *string;        /* JSON_STRING, NUL-terminated (may contain no NUL itself) */
  size_t len;          /* string length in bytes, or number of children */
  struct json **items; /* JSON_ARRAY / JSON_OBJECT children */
  char **keys;         /* JSON_OBJECT keys, parallel to items */
} json_t;

/* Parses text; returns NULL and a message in err (if given) on a syntax error. */
json_t *json_parse(const char *text, char *err, size_t err_len);
/* Reads and parses a file; returns NULL and a message in err on failure. */
json_t *json_parse_file(const char *path, char *err, size_t err_len);
/* Member key of an object, or NULL. */
const json_t *json_get(const json_t *obj, const char *key);
/* Frees a tree returned by json_parse(). */
void json_free(json_t *v);

#endif
