/* appdb's native hot path: SQLite's C API reached through APSW's own SQLite.
 *
 * APSW's wheels link SQLite privately (no exported sqlite3_* symbols), and a second
 * copy of SQLite must never touch APSW's handles (sqlite.org/howtocorrupt.html,
 * 2.2.1). So this module is also a SQLite loadable extension: APSW loads the
 * module's own file once (appdb_fastcache_init below), SQLite hands over the
 * sqlite3_api_routines table of the library APSW uses, and every sqlite3_* call
 * here goes through that table (sqlite3ext.h turns sqlite3_step into
 * sqlite3_api->step). include/sqlite3.h and include/sqlite3ext.h are SQLite
 * 3.40.1's public-domain headers: the table only grows at its end, so a library at
 * least that new has every entry used here (checked at load, appdb_native_load).
 */
#ifndef APPDB_NATIVE_H
#define APPDB_NATIVE_H

#include "Python.h"
#include "sqlite3ext.h"

/* static, not SQLITE_EXTENSION_INIT1's global: no other extension in the process
   can bind to this pointer, and this module cannot bind to theirs. */
static const sqlite3_api_routines *sqlite3_api = 0;

#if defined(_WIN32)
#  define APPDB_EXPORT __declspec(dllexport)
#else
#  define APPDB_EXPORT __attribute__((visibility("default")))
#endif

/* The entry point SQLite calls when APSW loads this file as an extension. A
   different table from a second SQLite library is refused. */
APPDB_EXPORT int appdb_fastcache_init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
    (void)db;
    (void)err;
    if (sqlite3_api != 0 && sqlite3_api != api) return SQLITE_ERROR;
    sqlite3_api = api;
    return SQLITE_OK;
}

static int appdb_native_loaded(void) { return sqlite3_api != 0; }

/* SQLite's version through the table (0 before loading). */
static int appdb_native_version(void) { return sqlite3_api ? sqlite3_libversion_number() : 0; }

/* Prepare the one statement in sql (persistent: it lives in the cache). Returns
   SQLITE_OK with *out set, SQLITE_MISUSE with *out NULL when sql holds no
   statement or more than one (APSW's cursor runs those), or the error code. */
static int appdb_prepare(sqlite3 *db, const char *sql, int n, sqlite3_stmt **out) {
    const char *tail = 0;
    sqlite3_stmt *st = 0, *more = 0;
    int rc = sqlite3_prepare_v3(db, sql, n, SQLITE_PREPARE_PERSISTENT, &st, &tail);
    *out = 0;
    if (rc != SQLITE_OK) {
        sqlite3_finalize(st);
        return rc;
    }
    if (st == 0) return SQLITE_MISUSE;
    while (tail && tail < sql + n && *tail) { /* only comments and ';' may follow */
        const char *next = 0;
        rc = sqlite3_prepare_v3(db, tail, (int)(sql + n - tail), 0, &more, &next);
        if (rc != SQLITE_OK || more != 0 || next == tail) {
            sqlite3_finalize(more);
            sqlite3_finalize(st);
            return SQLITE_MISUSE;
        }
        tail = next;
    }
    *out = st;
    return SQLITE_OK;
}

/* Bind v to parameter i the way APSW binds it. Returns 1 when bound, 0 when the
   value is not one of int, bool, float, str, bytes, None (APSW's cursor then binds
   the whole call: buffers, zeroblobs, adapters, and its errors for the rest), -1
   when SQLite refused (out of range: never for a counted parameter). Text and blobs
   are bound SQLITE_STATIC: the caller keeps the values alive until the step ends
   and binds every parameter again before the next step. */
static int appdb_bind(sqlite3_stmt *st, int i, PyObject *v) {
    PyTypeObject *t = Py_TYPE(v);
    int rc;
    if (v == Py_None) {
        rc = sqlite3_bind_null(st, i);
    } else if (t == &PyLong_Type || t == &PyBool_Type) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0; /* APSW raises OverflowError: let it */
        }
        rc = sqlite3_bind_int64(st, i, x);
    } else if (t == &PyFloat_Type) {
        rc = sqlite3_bind_double(st, i, PyFloat_AS_DOUBLE(v));
    } else if (t == &PyUnicode_Type) {
        Py_ssize_t size;
        const char *s = PyUnicode_AsUTF8AndSize(v, &size);
        if (s == 0) {
            PyErr_Clear();
            return 0; /* lone surrogates: APSW raises UnicodeEncodeError */
        }
        rc = sqlite3_bind_text64(st, i, s, (sqlite3_uint64)size, SQLITE_STATIC, SQLITE_UTF8);
    } else if (t == &PyBytes_Type) {
        rc = sqlite3_bind_blob64(st, i, PyBytes_AS_STRING(v), (sqlite3_uint64)PyBytes_GET_SIZE(v), SQLITE_STATIC);
    } else {
        return 0;
    }
    return rc == SQLITE_OK ? 1 : -1;
}

/* A column value as APSW returns it. */
static PyObject *appdb_value(sqlite3_value *v) {
    switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER:
        return PyLong_FromLongLong(sqlite3_value_int64(v));
    case SQLITE_FLOAT:
        return PyFloat_FromDouble(sqlite3_value_double(v));
    case SQLITE_TEXT: {
        const char *s = (const char *)sqlite3_value_text(v);
        int n = sqlite3_value_bytes(v);
        if (s == 0) return PyErr_NoMemory();
        return PyUnicode_DecodeUTF8(s, n, 0);
    }
    case SQLITE_BLOB: {
        const void *b = sqlite3_value_blob(v);
        int n = sqlite3_value_bytes(v);
        if (b == 0 && n) return PyErr_NoMemory();
        return PyBytes_FromStringAndSize((const char *)b, n);
    }
    default:
        Py_RETURN_NONE;
    }
}

/* Rows are read with the connection's mutex held once, and each column through
   sqlite3_column_value: every sqlite3_column_* call enters and leaves that mutex,
   which cost 16 mutex calls (about 1,100 instructions, callgrind) per 5-column row.
   Holding it makes the values sqlite3_column_value returns safe to read (its
   documentation: unprotected values are safe when no other thread uses the
   connection). */
#define APPDB_ROW_BEGIN(st) sqlite3_mutex *appdb_mutex = sqlite3_db_mutex(sqlite3_db_handle(st)); sqlite3_mutex_enter(appdb_mutex)
#define APPDB_ROW_END() sqlite3_mutex_leave(appdb_mutex)

/* Column i of the current row. */
static PyObject *appdb_column(sqlite3_stmt *st, int i) {
    PyObject *v;
    APPDB_ROW_BEGIN(st);
    v = appdb_value(sqlite3_column_value(st, i));
    APPDB_ROW_END();
    return v;
}

/* The current row as a tuple of n columns. */
static PyObject *appdb_row_tuple(sqlite3_stmt *st, int n) {
    PyObject *row = PyTuple_New(n);
    int i;
    if (row == 0) return 0;
    {
        APPDB_ROW_BEGIN(st);
        for (i = 0; i < n; i++) {
            PyObject *v = appdb_value(sqlite3_column_value(st, i));
            if (v == 0) {
                APPDB_ROW_END();
                Py_DECREF(row);
                return 0;
            }
            PyTuple_SET_ITEM(row, i, v);
        }
        APPDB_ROW_END();
    }
    return row;
}

/* The current row as a dict keyed by names (a tuple of n str, already checked
   unique). template is dict.fromkeys(names): copying it (a memcpy of its key table)
   then replacing the values measured 15% faster than inserting into a new dict. */
static PyObject *appdb_row_dict(sqlite3_stmt *st, int n, PyObject *names, PyObject *template) {
    PyObject *row = PyDict_Copy(template);
    int i;
    if (row == 0) return 0;
    {
        APPDB_ROW_BEGIN(st);
        for (i = 0; i < n; i++) {
            PyObject *v = appdb_value(sqlite3_column_value(st, i));
            if (v == 0 || PyDict_SetItem(row, PyTuple_GET_ITEM(names, i), v) < 0) {
                APPDB_ROW_END();
                Py_XDECREF(v);
                Py_DECREF(row);
                return 0;
            }
            Py_DECREF(v);
        }
        APPDB_ROW_END();
    }
    return row;
}

/* -1 when a Python exception is pending (raised by an APSW callback such as a
   user function, hook or progress handler while SQLite ran): Cython raises it. */
static int appdb_pending(void) { return PyErr_Occurred() ? -1 : 0; }

#endif
