// Generic random generation and deep comparison of protobuf-c messages, driven only by protobuf-c's descriptors,
// so that the reference side of the differential tests has no per-field code of Shoal's.
#include "shoal_pbc_reference.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const ProtobufCMessageDescriptor *shoal_pbc_all_types_descriptor(void) { return &conformance__v1__all_types__descriptor; }
const ProtobufCMessageDescriptor *shoal_pbc_node_descriptor(void) { return &conformance__v1__node__descriptor; }

// splitmix64: small, seeded, good enough for test data.
static uint64_t next_random(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int chance(uint64_t *state, int percent) { return (int)(next_random(state) % 100) < percent; }

// Integers biased to the interesting edges: 0, small, negative, extremes, every varint length.
static uint64_t random_bits(uint64_t *state) {
  switch (next_random(state) % 8) {
    case 0: return 0;
    case 1: return next_random(state) % 128;
    case 2: return (uint64_t)-(int64_t)(next_random(state) % 1000);
    case 3: return UINT64_MAX;
    case 4: return (uint64_t)INT64_MIN;
    case 5: return 1ull << (next_random(state) % 64);
    default: return next_random(state);
  }
}

static double random_double(uint64_t *state) {
  switch (next_random(state) % 6) {
    case 0: return 0.0;
    case 1: return -0.0;
    case 2: return 1.0 / 0.0;
    case 3: return (double)(int64_t)next_random(state) / 1024.0;
    default: { uint64_t bits = next_random(state); double d; memcpy(&d, &bits, 8); return d; }
  }
}

// Valid UTF-8 without NUL (protobuf-c strings are C strings): ASCII and 2-, 3- and 4-byte sequences.
static char *random_string(uint64_t *state) {
  size_t count = next_random(state) % 24;
  char *s = malloc(count * 4 + 1);
  size_t n = 0;
  for (size_t i = 0; i < count; i++) {
    uint32_t cp;
    switch (next_random(state) % 5) {
      case 0: cp = 0x80 + next_random(state) % (0x800 - 0x80); break;
      case 1: cp = 0x800 + next_random(state) % (0xD800 - 0x800); break;
      case 2: cp = 0x10000 + next_random(state) % (0x110000 - 0x10000); break;
      default: cp = 1 + next_random(state) % 0x7F; break;
    }
    if (cp < 0x80) { s[n++] = (char)cp; }
    else if (cp < 0x800) { s[n++] = (char)(0xC0 | (cp >> 6)); s[n++] = (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) { s[n++] = (char)(0xE0 | (cp >> 12)); s[n++] = (char)(0x80 | ((cp >> 6) & 0x3F)); s[n++] = (char)(0x80 | (cp & 0x3F)); }
    else { s[n++] = (char)(0xF0 | (cp >> 18)); s[n++] = (char)(0x80 | ((cp >> 12) & 0x3F)); s[n++] = (char)(0x80 | ((cp >> 6) & 0x3F)); s[n++] = (char)(0x80 | (cp & 0x3F)); }
  }
  s[n] = 0;
  return s;
}

static size_t scalar_size(ProtobufCType type) {
  switch (type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32: case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM: return 4;
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE: return 8;
    case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
  }
  return 0;
}

static int is_map_entry(const ProtobufCMessageDescriptor *d) {
  size_t len = strlen(d->name);
  return len > 5 && strcmp(d->name + len - 5, "Entry") == 0 && d->n_fields == 2;
}

static ProtobufCMessage *random_message(const ProtobufCMessageDescriptor *d, uint64_t *state, int depth);

// Writes one random value of `field`'s type at `out`.
static void random_value(const ProtobufCFieldDescriptor *field, void *out, uint64_t *state, int depth) {
  uint64_t bits = random_bits(state);
  switch (field->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32: { uint32_t v = (uint32_t)bits; memcpy(out, &v, 4); break; }
    case PROTOBUF_C_TYPE_ENUM: {
      // Mostly named values; sometimes one the schema does not name (open enums keep it).
      const ProtobufCEnumDescriptor *e = field->descriptor;
      int32_t v = chance(state, 80) ? e->values[next_random(state) % e->n_values].value : (int32_t)(next_random(state) % 1000) - 500;
      memcpy(out, &v, 4);
      break;
    }
    case PROTOBUF_C_TYPE_BOOL: { protobuf_c_boolean v = (protobuf_c_boolean)(bits & 1); memcpy(out, &v, sizeof v); break; }
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: memcpy(out, &bits, 8); break;
    case PROTOBUF_C_TYPE_FLOAT: { float v = (float)random_double(state); memcpy(out, &v, 4); break; }
    case PROTOBUF_C_TYPE_DOUBLE: { double v = random_double(state); memcpy(out, &v, 8); break; }
    case PROTOBUF_C_TYPE_STRING: { char *s = random_string(state); memcpy(out, &s, sizeof s); break; }
    case PROTOBUF_C_TYPE_BYTES: {
      ProtobufCBinaryData b;
      b.len = next_random(state) % 40;
      b.data = malloc(b.len ? b.len : 1);
      for (size_t i = 0; i < b.len; i++) b.data[i] = (uint8_t)next_random(state);
      memcpy(out, &b, sizeof b);
      break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
      ProtobufCMessage *m = random_message(field->descriptor, state, depth + 1);
      memcpy(out, &m, sizeof m);
      break;
    }
  }
}

static ProtobufCMessage *random_message(const ProtobufCMessageDescriptor *d, uint64_t *state, int depth) {
  ProtobufCMessage *m = calloc(1, d->sizeof_message);
  d->message_init(m);
  if (depth > 3) return m;
  int fill = is_map_entry(d) ? 100 : 35;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    char *base = (char *)m;
    // Message fields below the depth limit are left empty (NULL).
    if (f->type == PROTOBUF_C_TYPE_MESSAGE && depth >= 3 && !is_map_entry(f->descriptor)) continue;
    if (!chance(state, fill)) continue;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
      if (*which != 0) continue;  // one member per oneof
      *which = f->id;
      random_value(f, base + f->offset, state, depth);
    } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = next_random(state) % 6;
      size_t sz = scalar_size(f->type);
      char *array = calloc(n ? n : 1, sz);
      for (size_t k = 0; k < n; k++) random_value(f, array + k * sz, state, depth);
      *(size_t *)(base + f->quantifier_offset) = n;
      *(void **)(base + f->offset) = array;
    } else {
      random_value(f, base + f->offset, state, depth);
    }
  }
  return m;
}

ProtobufCMessage *shoal_pbc_random_message(const ProtobufCMessageDescriptor *d, uint64_t seed, int max_depth) {
  uint64_t state = seed * 0x2545F4914F6CDD1Dull + 1;
  (void)max_depth;
  return random_message(d, &state, 0);
}

// --- comparison ----------------------------------------------------------------------------------------------

static int equal_message(const ProtobufCMessage *a, const ProtobufCMessage *b, char *where, size_t n);

static int equal_value(const ProtobufCFieldDescriptor *f, const void *a, const void *b, char *where, size_t n) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
      const char *x = *(char *const *)a, *y = *(char *const *)b;
      return strcmp(x ? x : "", y ? y : "") == 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      const ProtobufCBinaryData *x = a, *y = b;
      return x->len == y->len && (x->len == 0 || memcmp(x->data, y->data, x->len) == 0);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
      const ProtobufCMessage *x = *(ProtobufCMessage *const *)a, *y = *(ProtobufCMessage *const *)b;
      if (!x || !y) return x == y;
      return equal_message(x, y, where, n);
    }
    case PROTOBUF_C_TYPE_BOOL: return (*(const protobuf_c_boolean *)a != 0) == (*(const protobuf_c_boolean *)b != 0);
    // protobuf-c writes no -0.0 for a proto3 scalar without presence (C++ and upb do), so its own round trip
    // turns -0.0 into 0.0 there; elsewhere floats compare by bit pattern.
    case PROTOBUF_C_TYPE_DOUBLE:
      if (f->label == PROTOBUF_C_LABEL_NONE && *(const double *)a == 0 && *(const double *)b == 0) return 1;
      return memcmp(a, b, 8) == 0;
    case PROTOBUF_C_TYPE_FLOAT:
      if (f->label == PROTOBUF_C_LABEL_NONE && *(const float *)a == 0 && *(const float *)b == 0) return 1;
      return memcmp(a, b, 4) == 0;
    default: return memcmp(a, b, scalar_size(f->type)) == 0;  // floats by bit pattern
  }
}

// Map fields: repeated entries, compared as maps (the last occurrence of a key wins on decode).
static int equal_map(const ProtobufCFieldDescriptor *f, size_t na, ProtobufCMessage **ea, size_t nb, ProtobufCMessage **eb, char *where, size_t n) {
  const ProtobufCMessageDescriptor *entry = f->descriptor;
  const ProtobufCFieldDescriptor *key = &entry->fields[0], *value = &entry->fields[1];
  size_t distinct_a = 0, distinct_b = 0;
  for (size_t i = 0; i < na; i++) {
    int last = 1;
    for (size_t j = i + 1; j < na; j++) if (equal_value(key, (char *)ea[i] + key->offset, (char *)ea[j] + key->offset, where, n)) last = 0;
    if (!last) continue;
    distinct_a++;
    int found = 0;
    for (size_t j = nb; j-- > 0;) {
      if (equal_value(key, (char *)ea[i] + key->offset, (char *)eb[j] + key->offset, where, n)) {
        if (!equal_value(value, (char *)ea[i] + value->offset, (char *)eb[j] + value->offset, where, n)) return 0;
        found = 1;
        break;
      }
    }
    if (!found) return 0;
  }
  for (size_t i = 0; i < nb; i++) {
    int last = 1;
    for (size_t j = i + 1; j < nb; j++) if (equal_value(key, (char *)eb[i] + key->offset, (char *)eb[j] + key->offset, where, n)) last = 0;
    distinct_b += last;
  }
  return distinct_a == distinct_b;
}

static int equal_message(const ProtobufCMessage *a, const ProtobufCMessage *b, char *where, size_t n) {
  const ProtobufCMessageDescriptor *d = a->descriptor;
  if (d != b->descriptor) { snprintf(where, n, "<descriptor>"); return 0; }
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    const char *pa = (const char *)a + f->offset, *pb = (const char *)b + f->offset;
    int ok;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      uint32_t wa = *(const uint32_t *)((const char *)a + f->quantifier_offset);
      uint32_t wb = *(const uint32_t *)((const char *)b + f->quantifier_offset);
      if ((wa == f->id) != (wb == f->id)) ok = 0;
      else ok = wa != f->id || equal_value(f, pa, pb, where, n);
    } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t na = *(const size_t *)((const char *)a + f->quantifier_offset);
      size_t nb = *(const size_t *)((const char *)b + f->quantifier_offset);
      const char *xa = *(char *const *)pa, *xb = *(char *const *)pb;
      if (f->type == PROTOBUF_C_TYPE_MESSAGE && is_map_entry(f->descriptor)) {
        ok = equal_map(f, na, (ProtobufCMessage **)xa, nb, (ProtobufCMessage **)xb, where, n);
      } else {
        ok = na == nb;
        size_t sz = scalar_size(f->type);
        for (size_t k = 0; ok && k < na; k++) ok = equal_value(f, xa + k * sz, xb + k * sz, where, n);
      }
    } else {
      ok = equal_value(f, pa, pb, where, n);
    }
    if (!ok) {
      if (where[0] == 0) snprintf(where, n, "%s.%s", d->short_name, f->name);
      return 0;
    }
  }
  return 1;
}

int shoal_pbc_equal(const ProtobufCMessage *a, const ProtobufCMessage *b, char *where, size_t where_size) {
  if (where_size) where[0] = 0;
  return equal_message(a, b, where, where_size);
}
