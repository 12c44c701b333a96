/*
 * c-stamp: a Weir transform written in plain C against weir_plugin.h, with no SDK.
 *
 * Every record whose value is a JSON object gets a first member "stamped_by":"c-stamp";
 * other values pass unchanged. A record longer than `max_bytes` is rejected with a reason
 * (the host sends it to the pipeline's dead letters). A batch holding a record that contains
 * the `fail_on` text fails as a whole with FATAL: the host fails the batch's records with the
 * message and carries on with the next batch.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -shared -fPIC -I ../../plugins/sdk/include \
 *           -o libc_stamp.so c_stamp.c
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weir_plugin.h"

#define LIT(s) {(const uint8_t *)(s), sizeof(s) - 1}

static const char STAMP[] = "\"stamped_by\":\"c-stamp\"";
#define STAMP_LEN (sizeof(STAMP) - 1)

static const char SCHEMA[] =
    "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"title\":\"c-stamp\","
    "\"description\":\"Config of the c-stamp transform.\",\"type\":\"object\","
    "\"additionalProperties\":false,\"required\":[\"max_bytes\"],\"properties\":{"
    "\"max_bytes\":{\"description\":\"Records longer than this many bytes are rejected.\","
    "\"type\":\"integer\",\"minimum\":1},"
    "\"fail_on\":{\"description\":\"A batch holding a record that contains this text fails as a "
    "whole (shows the error path). Plain text: no escapes.\",\"type\":\"string\",\"minLength\":1}}}";

/* One instance: its config and the host's callbacks. */
typedef struct {
    unsigned long long max_bytes;
    char *fail_on; /* NUL-terminated, or NULL */
    WeirHostApi host;
} Stamp;

/* ---- messages: allocated here, released by the host through `release` ---- */

static void release_malloced(void *private_) { free(private_); }

static void say(WeirOwnedBytes *out, const char *fmt, ...) {
    if (out == NULL) return;
    char *text = malloc(512);
    if (text == NULL) return;
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(text, 512, fmt, args);
    va_end(args);
    out->ptr = (const uint8_t *)text;
    out->len = n < 0 ? 0 : (n >= 512 ? 511 : (size_t)n);
    out->release = release_malloced;
    out->private_ = text;
}

/* ---- config: the host checked it against SCHEMA, so it is an object holding only
 * `max_bytes` (an integer) and maybe `fail_on` (a string); this reads exactly that ---- */

/* JSON's whitespace. */
static int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && is_ws((unsigned char)*p)) p++;
    return p;
}

/* Reads a JSON string without escapes at p (on the opening quote); NULL if it has any. */
static const char *read_string(const char *p, const char *end, const char **start, size_t *len) {
    if (p >= end || *p != '"') return NULL;
    const char *s = ++p;
    while (p < end && *p != '"') {
        if (*p == '\\') return NULL;
        p++;
    }
    if (p >= end) return NULL;
    *start = s;
    *len = (size_t)(p - s);
    return p + 1;
}

/* Parses config into s (when not NULL); on error says which field is wrong and returns
 * INVALID_CONFIG. The message starts with the field's JSON pointer, so the host shows it at
 * that field's line. */
static WeirStatus parse_config(WeirStrRef config, Stamp *s, WeirOwnedBytes *message) {
    const char *p = (const char *)config.ptr, *end = p + config.len;
    unsigned long long max_bytes = 0;
    const char *fail_on = NULL;
    size_t fail_on_len = 0;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{') goto malformed;
    for (;;) {
        p = skip_ws(p, end);
        if (p < end && *p == '}') break;
        const char *key;
        size_t key_len;
        if ((p = read_string(p, end, &key, &key_len)) == NULL) goto malformed;
        p = skip_ws(p, end);
        if (p >= end || *p++ != ':') goto malformed;
        p = skip_ws(p, end);
        if (key_len == 9 && memcmp(key, "max_bytes", 9) == 0) {
            char *after;
            max_bytes = strtoull(p, &after, 10);
            if (after == p) goto malformed;
            p = after;
        } else if (key_len == 7 && memcmp(key, "fail_on", 7) == 0) {
            if ((p = read_string(p, end, &fail_on, &fail_on_len)) == NULL) {
                say(message, "/fail_on: write it as plain text, without escapes (\\)");
                return WeirStatus_INVALID_CONFIG;
            }
        } else {
            say(message, "/%.*s: unknown field; c-stamp takes max_bytes and fail_on", (int)key_len, key);
            return WeirStatus_INVALID_CONFIG;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') p++;
    }
    if (max_bytes == 0) {
        say(message, "/max_bytes: must be at least 1");
        return WeirStatus_INVALID_CONFIG;
    }
    if (s != NULL) {
        s->max_bytes = max_bytes;
        s->fail_on = NULL;
        if (fail_on != NULL) {
            s->fail_on = malloc(fail_on_len + 1);
            if (s->fail_on == NULL) goto no_memory;
            memcpy(s->fail_on, fail_on, fail_on_len);
            s->fail_on[fail_on_len] = '\0';
        }
    }
    return WeirStatus_OK;
malformed:
    say(message, "the config is not the object c-stamp expects: {\"max_bytes\": N, \"fail_on\": \"text\"}");
    return WeirStatus_INVALID_CONFIG;
no_memory:
    say(message, "out of memory");
    return WeirStatus_FATAL;
}

/* ---- the plugin's functions ---- */

static WeirStatus stamp_validate(WeirStrRef config, WeirOwnedBytes *message) {
    return parse_config(config, NULL, message);
}

static WeirStatus stamp_create(WeirStrRef config, const WeirHostApi *host, void **instance, WeirOwnedBytes *message) {
    if (host == NULL || instance == NULL) return WeirStatus_INVALID_ARGUMENT;
    Stamp *s = calloc(1, sizeof *s);
    if (s == NULL) return WeirStatus_FATAL;
    WeirStatus status = parse_config(config, s, message);
    if (status != WeirStatus_OK) {
        free(s);
        return status;
    }
    /* Copy the host's callbacks only as far as the host's struct_size says they go. */
    size_t size = host->struct_size < sizeof s->host ? host->struct_size : sizeof s->host;
    memcpy(&s->host, host, size);
    char line[160];
    int n = snprintf(line, sizeof line, "c-stamp ready: max_bytes %llu%s", s->max_bytes, s->fail_on ? ", fail_on set" : "");
    s->host.log(s->host.ctx, WEIR_LEVEL_INFO, (WeirStrRef){(const uint8_t *)line, (size_t)n});
    *instance = s;
    return WeirStatus_OK;
}

static void stamp_destroy(void *instance) {
    Stamp *s = instance;
    if (s == NULL) return;
    free(s->fail_on);
    free(s);
}

/* Everything one output owns, freed together by release_output. */
typedef struct {
    uint8_t *data;
    WeirRecordMeta *records;
    uint32_t *origins;
    WeirRejection *rejections;
    char *text;
} Owned;

static void release_output(void *private_) {
    Owned *o = private_;
    if (o == NULL) return;
    free(o->data);
    free(o->records);
    free(o->origins);
    free(o->rejections);
    free(o->text);
    free(o);
}

static int contains(const uint8_t *hay, size_t hay_len, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; n <= hay_len && i <= hay_len - n; i++)
        if (memcmp(hay + i, needle, n) == 0) return 1;
    return 0;
}

/* Whether [off, off + len) lies inside a buffer of `size` bytes. */
static int inside(uint32_t off, uint32_t len, size_t size) { return (size_t)off <= size && (size_t)len <= size - off; }

static WeirStatus stamp_process(void *instance, const WeirBatchView *batch, WeirStageOutput *output, WeirOwnedBytes *message) {
    Stamp *s = instance;
    if (s == NULL || batch == NULL || output == NULL || (batch->count > 0 && (batch->data == NULL || batch->records == NULL)))
        return WeirStatus_INVALID_ARGUMENT;
    uint32_t count = batch->count;
    for (uint32_t i = 0; i < count; i++) {
        const WeirRecordMeta *r = &batch->records[i];
        if (!inside(r->value_off, r->value_len, batch->data_len) || !inside(r->headers_off, r->headers_len, batch->data_len) ||
            (r->key_len != WEIR_ABSENT && !inside(r->key_off, r->key_len, batch->data_len))) {
            say(message, "record %u lies outside the batch's data", i);
            return WeirStatus_INVALID_ARGUMENT;
        }
        if (s->fail_on != NULL && contains(batch->data + r->value_off, r->value_len, s->fail_on)) {
            say(message, "record %u contains \"%s\": c-stamp fails the whole batch", i, s->fail_on);
            return WeirStatus_FATAL;
        }
    }
    /* Each output record: its key, headers and value (stamped: at most STAMP_LEN + 1 more). */
    size_t capacity = 1;
    for (uint32_t i = 0; i < count; i++) {
        const WeirRecordMeta *r = &batch->records[i];
        capacity += (r->key_len == WEIR_ABSENT ? 0 : r->key_len) + r->headers_len + r->value_len + STAMP_LEN + 1;
    }
    if (capacity > UINT32_MAX) {
        say(message, "the stamped batch would be over 4 GiB; send smaller batches");
        return WeirStatus_FATAL;
    }
    Owned *o = calloc(1, sizeof *o);
    if (o == NULL) return WeirStatus_FATAL;
    o->data = malloc(capacity);
    o->records = calloc(count ? count : 1, sizeof *o->records);
    o->origins = calloc(count ? count : 1, sizeof *o->origins);
    o->rejections = calloc(count ? count : 1, sizeof *o->rejections);
    o->text = malloc((size_t)count * 80 + 1);
    if (o->data == NULL || o->records == NULL || o->origins == NULL || o->rejections == NULL || o->text == NULL) {
        release_output(o);
        say(message, "out of memory for a batch of %u records", count);
        return WeirStatus_FATAL;
    }
    size_t used = 0, text_len = 0;
    uint32_t out_count = 0, rejected = 0;
    for (uint32_t i = 0; i < count; i++) {
        const WeirRecordMeta *r = &batch->records[i];
        const uint8_t *value = batch->data + r->value_off;
        if (r->value_len > s->max_bytes) {
            int n = snprintf(o->text + text_len, 80, "record of %u bytes is over max_bytes %llu", r->value_len, s->max_bytes);
            o->rejections[rejected++] = (WeirRejection){i, (uint32_t)text_len, (uint32_t)n};
            text_len += (size_t)n;
            continue;
        }
        WeirRecordMeta *m = &o->records[out_count];
        m->timestamp_ms = r->timestamp_ms;
        m->key_off = (uint32_t)used;
        m->key_len = r->key_len;
        if (r->key_len != WEIR_ABSENT) {
            memcpy(o->data + used, batch->data + r->key_off, r->key_len);
            used += r->key_len;
        }
        m->headers_off = (uint32_t)used;
        m->headers_len = r->headers_len;
        memcpy(o->data + used, batch->data + r->headers_off, r->headers_len);
        used += r->headers_len;
        m->value_off = (uint32_t)used;
        size_t lead = 0;
        while (lead < r->value_len && is_ws(value[lead])) lead++;
        if (lead < r->value_len && value[lead] == '{') {
            /* {"stamped_by":"c-stamp", then the rest; no comma when the object is empty. */
            size_t rest = lead + 1;
            while (rest < r->value_len && is_ws(value[rest])) rest++;
            int empty = rest < r->value_len && value[rest] == '}';
            o->data[used++] = '{';
            memcpy(o->data + used, STAMP, STAMP_LEN);
            used += STAMP_LEN;
            if (!empty) o->data[used++] = ',';
            memcpy(o->data + used, value + lead + 1, r->value_len - lead - 1);
            used += r->value_len - lead - 1;
            m->value_len = (uint32_t)(used - m->value_off);
        } else {
            memcpy(o->data + used, value, r->value_len);
            used += r->value_len;
            m->value_len = r->value_len;
        }
        o->origins[out_count++] = i;
    }
    memset(output, 0, sizeof *output);
    output->struct_size = sizeof *output;
    output->batch = (WeirBatchView){sizeof(WeirBatchView), out_count, o->data, used, o->records};
    output->origins = o->origins;
    output->rejections = o->rejections;
    output->rejection_count = rejected;
    output->text = (const uint8_t *)o->text;
    output->text_len = text_len;
    output->release = release_output;
    output->private_ = o;
    return WeirStatus_OK;
}

/* ---- the manifest: static, returned by the one exported symbol ---- */

static const WeirPluginDescriptor PLUGINS[] = {{
    .struct_size = sizeof(WeirPluginDescriptor),
    .kind = WeirKind_TRANSFORM,
    .name = LIT("c-stamp"),
    .description = LIT("Stamps JSON objects, rejects records over a size (a transform in C)."),
    .config_schema = LIT(SCHEMA),
    .validate = stamp_validate,
    .create = stamp_create,
    .destroy = stamp_destroy,
    .process = stamp_process,
    /* start, stop, acknowledge, control, condition: NULL; flags: 0. */
}};

static const WeirManifest MANIFEST = {
    .abi_major = WEIR_ABI_MAJOR,
    .abi_minor = WEIR_ABI_MINOR,
    .struct_size = sizeof(WeirManifest),
    .library_name = LIT("c-stamp"),
    .library_version = LIT("0.1.0"),
    .build_info = LIT("compiler=cc " __VERSION__),
    .plugin_count = sizeof PLUGINS / sizeof PLUGINS[0],
    .plugins = PLUGINS,
    /* An example: loaded only from a plugin directory named with --plugins. */
    .flags = WEIR_LIBRARY_OPT_IN,
};

const WeirManifest *weir_plugin_manifest_v1(void) { return &MANIFEST; }
