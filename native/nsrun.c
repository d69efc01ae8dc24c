/* nsrun's native front: what `nsrun` runs first (docs/internals.md, "The native front").
 *
 * The common runs through the warm service, `nsrun [-p P] [-n N] [-u U] [-P SPEC]... -- CMD`
 * and `nsrun exec NAME -- CMD`, are a few system calls on the client's side: connect, send
 * the request, receive the namespace (root) or CMD's end (callers without root), enter, exec.
 * Starting Python for them costs more than the rest of the run, so this program does them
 * itself, exactly as nsrun/process/client.py does, and hands every other command line, and
 * every case it does not handle, to the Python CLI by exec (NSRUN_PYTHON: the launcher
 * install.sh and the package write), before it has changed anything. Python then decides,
 * says and does everything as it did without this front: help, usage errors, the daemonless
 * path, sudo callers, a -u of root's, a terminal for a caller without root (the pty relay),
 * an abstract NOTIFY_SOCKET, NSRUN_FIREWALL, a busy service.
 *
 * The command line is read by the grammar of nsrun/cli/grammar.py, for the two forms only;
 * any word that grammar would refuse is handed over, so Python says why. The wire format is
 * nsrun/wire.py's (docs/service.md). It reads no file but what `ip netns exec` reads
 * (/etc/netns/NAME, NAME checked as nsrun.names does) and the resolver endpoints it hides, and
 * writes nothing but the request, its `signal` messages and its own messages on stderr.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/capability.h>

#ifndef NSRUN_PYTHON
#error "build with -DNSRUN_PYTHON='\"/path/of/the/python/launcher\"' (install.sh does)"
#endif

#define VERSION 1
#define MAX_FRAME (1u << 20)
#define MAX_FDS 3
#define MAX_DEPTH 64
#define EXIT_NOT_EXECUTABLE 126
#define EXIT_NOT_FOUND 127

extern char **environ;
static char **g_argv;
/* what install.sh looks for to know this file for its own (`grep -a`) */
__attribute__((used)) static const char marker[] = "nsrun native front";

/* ---- handing over to the Python CLI --------------------------------------------------- */

static void delegate(void)
{
    execv(NSRUN_PYTHON, g_argv);
    fprintf(stderr, "nsrun: cannot start %s: %s\n", NSRUN_PYTHON, strerror(errno));
    _exit(1);
}

static void say(const char *fmt, ...)
{
    char line[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(2, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += w;
    }
}

static void fail(int code, const char *fmt, ...)
{
    char text[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    say("nsrun: %s\n", text);
    _exit(code);
}

/* ---- a growing byte buffer -------------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            fail(1, "out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string as nsrun.wire writes one (json's encode_basestring, then the UTF-8 encoding
 * with surrogateescape): bytes of 0x80 and above as they are, so a name or an argument that
 * is not UTF-8 reaches the service byte for byte. */
static void put_json(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"': put(b, "\\\"", 2); break;
        case '\\': put(b, "\\\\", 2); break;
        case '\n': put(b, "\\n", 2); break;
        case '\r': put(b, "\\r", 2); break;
        case '\t': put(b, "\\t", 2); break;
        case '\b': put(b, "\\b", 2); break;
        case '\f': put(b, "\\f", 2); break;
        default:
            if (*c < 0x20) {
                char esc[6] = {'\\', 'u', '0', '0', hex[*c >> 4], hex[*c & 15]};
                put(b, esc, 6);
            } else {
                put(b, (const char *)c, 1);
            }
        }
    }
    put(b, "\"", 1);
}

static void put_json_or_null(struct buf *b, const char *s)
{
    if (s)
        put_json(b, s);
    else
        puts_(b, "null");
}

/* ---- a JSON reader for the service's replies ------------------------------------------ */

enum { J_NULL, J_FALSE, J_TRUE, J_INT, J_FLOAT, J_STR, J_ARR, J_OBJ };

struct jv {
    int t;
    long long i;
    char *s;            /* J_STR: the decoded bytes, NUL-terminated (slen without it) */
    size_t slen;
    size_t n;           /* J_ARR, J_OBJ: how many */
    struct jv *items;   /* J_ARR: items; J_OBJ: values */
    char **keys;        /* J_OBJ */
};

/* Everything one message's tree holds, freed together. */
struct arena {
    void **p;
    size_t n, cap;
};

static void *amalloc(struct arena *a, size_t size)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        void **p = realloc(a->p, cap * sizeof *p);
        if (!p)
            fail(1, "out of memory");
        a->p = p;
        a->cap = cap;
    }
    void *m = calloc(1, size ? size : 1);
    if (!m)
        fail(1, "out of memory");
    a->p[a->n++] = m;
    return m;
}

static void afree(struct arena *a)
{
    for (size_t k = 0; k < a->n; k++)
        free(a->p[k]);
    a->n = 0;
}

struct reader {
    const char *s, *end;
    struct arena *a;
};

static void skip_space(struct reader *r)
{
    while (r->s < r->end && (*r->s == ' ' || *r->s == '\t' || *r->s == '\n' || *r->s == '\r'))
        r->s++;
}

static void put_utf8(struct buf *b, unsigned cp)
{
    char o[4];
    if (cp < 0x80) {
        o[0] = (char)cp;
        put(b, o, 1);
    } else if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        put(b, o, 2);
    } else if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        put(b, o, 3);
    } else {
        o[0] = (char)(0xf0 | cp >> 18);
        o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[3] = (char)(0x80 | (cp & 0x3f));
        put(b, o, 4);
    }
}

static int hex4(const char *s, const char *end, unsigned *out)
{
    if (end - s < 4)
        return -1;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int c = (unsigned char)s[k], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v << 4 | (unsigned)d;
    }
    *out = v;
    return 0;
}

static int parse_string(struct reader *r, char **out, size_t *outlen)
{
    struct buf b = {0};
    r->s++; /* the opening quote */
    for (;;) {
        if (r->s >= r->end)
            goto bad;
        unsigned char c = (unsigned char)*r->s++;
        if (c == '"')
            break;
        if (c < 0x20)
            goto bad;
        if (c != '\\') {
            put(&b, (const char *)&c, 1);
            continue;
        }
        if (r->s >= r->end)
            goto bad;
        c = (unsigned char)*r->s++;
        switch (c) {
        case '"': put(&b, "\"", 1); break;
        case '\\': put(&b, "\\", 1); break;
        case '/': put(&b, "/", 1); break;
        case 'b': put(&b, "\b", 1); break;
        case 'f': put(&b, "\f", 1); break;
        case 'n': put(&b, "\n", 1); break;
        case 'r': put(&b, "\r", 1); break;
        case 't': put(&b, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(r->s, r->end, &cp) < 0)
                goto bad;
            r->s += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && r->end - r->s >= 6 && r->s[0] == '\\' && r->s[1] == 'u'
                && hex4(r->s + 2, r->end, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
                r->s += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (cp >= 0xdc80 && cp < 0xdd00)
                put(&b, (const char[]){(char)(cp - 0xdc00)}, 1); /* surrogateescape's byte */
            else
                put_utf8(&b, cp);
            break;
        }
        default:
            goto bad;
        }
    }
    *out = amalloc(r->a, b.len + 1);
    if (b.len)
        memcpy(*out, b.p, b.len);
    *outlen = b.len;
    free(b.p);
    return 0;
bad:
    free(b.p);
    return -1;
}

static int parse_value(struct reader *r, struct jv *v, int depth);

static int parse_container(struct reader *r, struct jv *v, int depth, int object)
{
    size_t cap = 0;
    char close = object ? '}' : ']';
    r->s++;
    v->t = object ? J_OBJ : J_ARR;
    skip_space(r);
    if (r->s < r->end && *r->s == close) {
        r->s++;
        return 0;
    }
    for (;;) {
        if (v->n == cap) {
            cap = cap ? cap * 2 : 8;
            struct jv *items = amalloc(r->a, cap * sizeof *items);
            if (v->n)
                memcpy(items, v->items, v->n * sizeof *items);
            v->items = items;
            if (object) {
                char **keys = amalloc(r->a, cap * sizeof *keys);
                if (v->n)
                    memcpy(keys, v->keys, v->n * sizeof *keys);
                v->keys = keys;
            }
        }
        skip_space(r);
        if (object) {
            size_t klen;
            if (r->s >= r->end || *r->s != '"' || parse_string(r, &v->keys[v->n], &klen) < 0)
                return -1;
            skip_space(r);
            if (r->s >= r->end || *r->s != ':')
                return -1;
            r->s++;
        }
        if (parse_value(r, &v->items[v->n], depth + 1) < 0)
            return -1;
        v->n++;
        skip_space(r);
        if (r->s >= r->end)
            return -1;
        if (*r->s == ',') {
            r->s++;
            continue;
        }
        if (*r->s == close) {
            r->s++;
            return 0;
        }
        return -1;
    }
}

static int parse_value(struct reader *r, struct jv *v, int depth)
{
    memset(v, 0, sizeof *v);
    if (depth > MAX_DEPTH)
        return -1;
    skip_space(r);
    if (r->s >= r->end)
        return -1;
    char c = *r->s;
    if (c == '{' || c == '[')
        return parse_container(r, v, depth, c == '{');
    if (c == '"') {
        v->t = J_STR;
        return parse_string(r, &v->s, &v->slen);
    }
    static const struct { const char *word; int t; } words[] = {
        {"null", J_NULL}, {"true", J_TRUE}, {"false", J_FALSE}};
    for (size_t k = 0; k < 3; k++) {
        size_t len = strlen(words[k].word);
        if ((size_t)(r->end - r->s) >= len && memcmp(r->s, words[k].word, len) == 0) {
            r->s += len;
            v->t = words[k].t;
            return 0;
        }
    }
    /* a number: an integer is read as one (codes, signals, streams); any other is a float */
    const char *start = r->s;
    if (r->s < r->end && *r->s == '-')
        r->s++;
    const char *digits = r->s;
    while (r->s < r->end && isdigit((unsigned char)*r->s))
        r->s++;
    if (r->s == digits)
        return -1;
    int integral = 1;
    if (r->s < r->end && (*r->s == '.' || *r->s == 'e' || *r->s == 'E')) {
        integral = 0;
        while (r->s < r->end && (isdigit((unsigned char)*r->s) || strchr(".eE+-", *r->s)))
            r->s++;
    }
    v->t = integral ? J_INT : J_FLOAT;
    if (integral) {
        char tmp[32];
        size_t len = (size_t)(r->s - start);
        if (len >= sizeof tmp)
            v->t = J_FLOAT; /* beyond any code or signal: not an int for us */
        else {
            memcpy(tmp, start, len);
            tmp[len] = 0;
            errno = 0;
            v->i = strtoll(tmp, NULL, 10);
            if (errno)
                v->t = J_FLOAT;
        }
    }
    return 0;
}

static const struct jv *get(const struct jv *obj, const char *key)
{
    const struct jv *found = NULL;
    if (obj->t != J_OBJ)
        return NULL;
    for (size_t k = 0; k < obj->n; k++)
        if (strcmp(obj->keys[k], key) == 0)
            found = &obj->items[k]; /* the last one, as Python's json reads a repeated key */
    return found;
}

static const char *get_str(const struct jv *obj, const char *key)
{
    const struct jv *v = get(obj, key);
    return v && v->t == J_STR ? v->s : NULL;
}

static int get_int(const struct jv *obj, const char *key, long long *out)
{
    const struct jv *v = get(obj, key);
    if (!v || v->t != J_INT)
        return 0;
    *out = v->i;
    return 1;
}

/* ---- the wire (nsrun/wire.py) -------------------------------------------------------- */

static int g_sock = -1;

/* A failure to talk to the service, as the Python client words it. */
static void talk_failed(const char *what) { fail(1, "talking to the nsrun service: %s", what); }

static void close_fds(int *fds, int *nfds)
{
    for (int k = 0; k < *nfds; k++)
        close(fds[k]);
    *nfds = 0;
}

/* Read SIZE bytes into OUT, gathering descriptors; 0 when the peer closed before the first
 * byte of a frame (FIRST), -1 (errno) on an error, -2 for a protocol error (WHY). */
static int recv_exact(char *out, size_t size, int *fds, int *nfds, int first, const char **why)
{
    size_t got = 0;
    while (got < size) {
        char control[CMSG_SPACE(MAX_FDS * sizeof(int))];
        size_t want = size - got > 65536 ? 65536 : size - got;
        struct iovec iov = {out + got, want};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                            .msg_controllen = sizeof control};
        ssize_t n = recvmsg(g_sock, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int k = 0; k < count; k++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
                if (*nfds < MAX_FDS)
                    fds[(*nfds)++] = fd;
                else {
                    close(fd);
                    *why = "more than 3 descriptors sent";
                    return -2;
                }
            }
        }
        if (mh.msg_flags & MSG_CTRUNC) {
            *why = "more than 3 descriptors sent";
            return -2;
        }
        if (n == 0) {
            if (first && got == 0)
                return 0;
            *why = "truncated message (the peer closed mid-frame)";
            return -2;
        }
        got += (size_t)n;
    }
    return 1;
}

/* The next message (parsed into V, its tree in A) and its descriptors; 0 when the service
 * closed the connection between messages. Failures end the process as the Python client does. */
static int recv_msg(struct jv *v, struct arena *a, int *fds, int *nfds)
{
    unsigned char head[4];
    const char *why = NULL;
    *nfds = 0;
    int r = recv_exact((char *)head, 4, fds, nfds, 1, &why);
    if (r == 0)
        return 0;
    if (r == -1)
        talk_failed(strerror(errno));
    if (r == -2)
        talk_failed(why);
    uint32_t size = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
    if (size > MAX_FRAME)
        fail(1, "talking to the nsrun service: message too large (%u bytes; the limit is %u)", size, MAX_FRAME);
    char *body = amalloc(a, size + 1);
    r = recv_exact(body, size, fds, nfds, 0, &why);
    if (r == -1)
        talk_failed(strerror(errno));
    if (r <= 0)
        talk_failed(why ? why : "truncated message (the peer closed mid-frame)");
    struct reader rd = {body, body + size, a};
    if (parse_value(&rd, v, 0) < 0)
        talk_failed("message is not JSON");
    skip_space(&rd);
    if (rd.s != rd.end)
        talk_failed("message is not JSON");
    if (v->t != J_OBJ)
        talk_failed("message is not a JSON object");
    long long version;
    const struct jv *vv = get(v, "v");
    if (!get_int(v, "v", &version) || version != VERSION) {
        char text[200];
        if (vv && vv->t == J_INT)
            snprintf(text, sizeof text, "protocol version %lld is not spoken here (this side speaks %d)",
                     vv->i, VERSION);
        else
            snprintf(text, sizeof text, "protocol version %s is not spoken here (this side speaks %d)",
                     vv && vv->t == J_STR ? "(a string)" : "None", VERSION);
        talk_failed(text);
    }
    const char *type = get_str(v, "type");
    if (!type)
        talk_failed("message has no type");
    int allowed = strcmp(type, "ready") == 0 ? 1 : 0;
    if (*nfds > allowed) {
        close_fds(fds, nfds);
        char text[200];
        snprintf(text, sizeof text, "a %s message carries no more than %d descriptors", type, allowed);
        talk_failed(text);
    }
    return 1;
}

/* Send FRAME (its length header included) with FDS on its first bytes; 0, or -1 (errno). */
static int send_frame(const char *frame, size_t len, const int *fds, int nfds)
{
    size_t off = 0;
    if (nfds) {
        char control[CMSG_SPACE(MAX_FDS * sizeof(int))];
        memset(control, 0, sizeof control);
        struct iovec iov = {(void *)frame, len};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                            .msg_controllen = CMSG_SPACE(nfds * sizeof(int))};
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
        ssize_t n;
        do
            n = sendmsg(g_sock, &mh, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return -1;
        off = (size_t)n;
    }
    while (off < len) {
        ssize_t n = send(g_sock, frame + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

/* ---- what the command line means (nsrun/cli/grammar.py, two forms) ---------------------- */

struct request {
    int exec;              /* `nsrun exec NAME -- CMD`, else the run form */
    const char *profile, *name, *user;
    const char **publish;
    int npublish;
    char **cmd;
};

/* The value of option SPELLED at ARGV[*i] (ATTACHED: what followed it in the same word, or
 * NULL); NULL when grammar.parse would refuse it. */
static const char *option_value(char **argv, int argc, int *i, const char *attached)
{
    if (!attached) {
        if (*i >= argc || strcmp(argv[*i], "--") == 0)
            return NULL;
        attached = argv[(*i)++];
    }
    return *attached ? attached : NULL;
}

/* Read ARGV (without the program name) as grammar.parse does; 0 when it is one of the two
 * forms and would be accepted, else -1 (Python then reads it and says why). */
static int parse(int argc, char **argv, struct request *req)
{
    memset(req, 0, sizeof *req);
    req->publish = calloc((size_t)argc + 1, sizeof *req->publish);
    if (!req->publish)
        return -1;
    int i = 0, have_name_arg = 0, given_p = 0, given_n = 0, given_u = 0;
    if (argc < 1)
        return -1;
    if (strcmp(argv[0], "exec") == 0) {
        req->exec = 1;
        i = 1;
    } else if (argv[0][0] != '-') {
        return -1; /* another command, or a word grammar refuses */
    }
    while (i < argc) {
        char *word = argv[i++];
        if (strcmp(word, "--") == 0) {
            req->cmd = &argv[i];
            break;
        }
        if (strcmp(word, "-h") == 0 || strcmp(word, "--help") == 0)
            return -1;
        if (word[0] == '-') {
            const char *attached = NULL;
            char spelled[16];
            if (word[1] == '-') {
                char *eq = strchr(word, '=');
                size_t len = eq ? (size_t)(eq - word) : strlen(word);
                if (len >= sizeof spelled)
                    return -1;
                memcpy(spelled, word, len);
                spelled[len] = 0;
                attached = eq ? eq + 1 : NULL;
            } else {
                if (!word[1])
                    return -1;
                spelled[0] = '-';
                spelled[1] = word[1];
                spelled[2] = 0;
                attached = word[2] ? word + 2 : NULL;
                if (attached && attached[0] == '=')
                    attached++;
            }
            int which; /* 0 profile, 1 name, 2 user, 3 publish */
            if (strcmp(spelled, "-u") == 0 || strcmp(spelled, "--user") == 0)
                which = 2;
            else if (req->exec)
                return -1;
            else if (strcmp(spelled, "-p") == 0 || strcmp(spelled, "--profile") == 0)
                which = 0;
            else if (strcmp(spelled, "-n") == 0 || strcmp(spelled, "--name") == 0)
                which = 1;
            else if (strcmp(spelled, "-P") == 0 || strcmp(spelled, "--publish") == 0)
                which = 3;
            else
                return -1;
            int *given = which == 0 ? &given_p : which == 1 ? &given_n : &given_u;
            if (which != 3 && (*given)++)
                return -1; /* given twice */
            const char *value = option_value(argv, argc, &i, attached);
            if (!value)
                return -1;
            if (which == 0) req->profile = value;
            else if (which == 1) req->name = value;
            else if (which == 2) req->user = value;
            else req->publish[req->npublish++] = value;
            continue;
        }
        if (!req->exec)
            return -1; /* the run form takes no argument before `--` */
        if (have_name_arg) {
            req->cmd = &argv[i - 1]; /* `nsrun exec NAME CMD...` */
            break;
        }
        req->name = word;
        have_name_arg = 1;
    }
    if (req->exec && !have_name_arg)
        return -1;
    if (!req->cmd || !req->cmd[0])
        return -1;
    return 0;
}

/* ---- the request ------------------------------------------------------------------------- */

static int env_key_is(const char *entry, const char *key)
{
    size_t len = strlen(key);
    return strncmp(entry, key, len) == 0 && entry[len] == '=';
}

/* Whether environ[K] is one of os.environ's: it has a '=', and no earlier entry names the
 * same variable (Python keeps the first of a repeated name). */
static int environ_kept(size_t k)
{
    const char *eq = strchr(environ[k], '=');
    if (!eq)
        return 0;
    size_t len = (size_t)(eq - environ[k]);
    for (size_t j = 0; j < k; j++)
        if (strncmp(environ[j], environ[k], len + 1) == 0)
            return 0;
    return 1;
}

static void build(struct buf *b, const struct request *req, int root)
{
    put(b, "\0\0\0\0", 4); /* the length, filled in below */
    puts_(b, "{\"v\":1,\"type\":");
    puts_(b, req->exec ? "\"exec\"" : "\"run\"");
    if (req->exec) {
        puts_(b, ",\"name\":");
        put_json(b, req->name);
    }
    puts_(b, ",\"argv\":[");
    for (char **a = req->cmd; *a; a++) {
        if (a != req->cmd)
            put(b, ",", 1);
        put_json(b, *a);
    }
    put(b, "]", 1);
    if (!req->exec) {
        puts_(b, ",\"profile\":");
        put_json_or_null(b, req->profile);
        puts_(b, ",\"name\":");
        put_json_or_null(b, req->name);
    }
    puts_(b, ",\"user\":");
    put_json_or_null(b, req->user);
    if (!req->exec) {
        puts_(b, ",\"firewall\":null"); /* NSRUN_FIREWALL set: Python's (it checks the value) */
        if (req->npublish) {
            puts_(b, ",\"publish\":[");
            for (int k = 0; k < req->npublish; k++) {
                if (k)
                    put(b, ",", 1);
                put_json(b, req->publish[k]);
            }
            put(b, "]", 1);
        }
    }
    if (!root) {
        puts_(b, ",\"env\":{");
        int first = 1;
        for (size_t k = 0; environ[k]; k++) {
            if (!environ_kept(k))
                continue;
            char *eq = strchr(environ[k], '=');
            if (!first)
                put(b, ",", 1);
            first = 0;
            char *key = strndup(environ[k], (size_t)(eq - environ[k]));
            if (!key)
                fail(1, "out of memory");
            put_json(b, key);
            free(key);
            put(b, ":", 1);
            put_json(b, eq + 1);
        }
        char *cwd = getcwd(NULL, 0);
        puts_(b, "},\"cwd\":");
        put_json(b, cwd ? cwd : "/");
        free(cwd);
        puts_(b, ",\"tty\":false,\"winsize\":null,\"stdio\":true");
    }
    put(b, "}", 1);
    size_t body = b->len - 4;
    b->p[0] = (char)(body >> 24);
    b->p[1] = (char)(body >> 16);
    b->p[2] = (char)(body >> 8);
    b->p[3] = (char)body;
}

/* ---- replies ------------------------------------------------------------------------------ */

static void write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* a closed pipe ends this process by SIGPIPE first, as in Python */
        data += n;
        len -= (size_t)n;
    }
}

/* An `error` reply: end this process as the Python client ends (nsrun: MESSAGE, its code),
 * or, for a busy service and a ROOT caller, hand over to Python, which works without it.
 * ONLY_BUSY: after a failed send, only a busy service's reply counts (client.py's
 * _answered_before_reading); any other returns. */
static void on_error(const struct jv *v, int root, int only_busy)
{
    long long code;
    int have = get_int(v, "code", &code);
    const struct jv *busy = get(v, "busy");
    int is_busy = busy && busy->t == J_TRUE && !(have && code == 2);
    if (only_busy && !is_busy)
        return;
    if (is_busy && root) {
        close(g_sock);
        delegate(); /* never locked out by a busy service: daemonless */
    }
    const char *text = get_str(v, "message");
    int status = have && code == 2 ? 2 : 1;
    if (have && code != 1 && code != 2)
        status = (int)code;
    write_all(2, "nsrun: ", 7);
    text = text ? text : "the service failed";
    write_all(2, text, strlen(text));
    write_all(2, "\n", 1);
    _exit(status);
}

/* The service's next reply but `output` (relayed); an `error` ends this process (on_error). */
static void await_reply(struct jv *v, struct arena *a, int *fds, int *nfds, int root)
{
    for (;;) {
        afree(a);
        if (!recv_msg(v, a, fds, nfds))
            fail(1, "the nsrun service closed the connection (see its log)");
        const char *type = get_str(v, "type");
        if (strcmp(type, "output") == 0) {
            const struct jv *data = get(v, "data");
            long long stream = 1;
            get_int(v, "stream", &stream);
            if (data && data->t == J_STR)
                write_all(stream == 2 ? 2 : 1, data->s, data->slen);
            continue;
        }
        if (strcmp(type, "error") == 0) {
            close_fds(fds, nfds);
            on_error(v, root, 0);
        }
        return;
    }
}

/* After a failed send: the `error` a busy service sent before it read the request, if any. */
static void answered_before_reading(int root)
{
    struct arena a = {0};
    struct jv v;
    int fds[MAX_FDS], nfds = 0;
    for (;;) {
        char peek;
        /* a send failed because the service closed: what it said is already here, or nothing */
        if (recv(g_sock, &peek, 1, MSG_PEEK | MSG_DONTWAIT) <= 0)
            return;
        afree(&a);
        if (!recv_msg(&v, &a, fds, &nfds))
            return;
        close_fds(fds, &nfds);
        const char *type = get_str(&v, "type");
        if (strcmp(type, "output") == 0)
            continue;
        if (strcmp(type, "error") == 0)
            on_error(&v, root, 1);
        return;
    }
}

/* ---- a caller without root: the service starts CMD (client.py's _not_root) ------------- */

static volatile sig_atomic_t g_passing;

static void pass_signal(int signo)
{
    /* one small frame, written whole from the handler (send is async-signal-safe) */
    char frame[64];
    char body[48] = "{\"v\":1,\"type\":\"signal\",\"signo\":";
    size_t len = strlen(body);
    char digits[4];
    int nd = 0, s = signo;
    do {
        digits[nd++] = (char)('0' + s % 10);
        s /= 10;
    } while (s && nd < 3);
    while (nd)
        body[len++] = digits[--nd];
    body[len++] = '}';
    frame[0] = frame[1] = frame[2] = 0;
    frame[3] = (char)len;
    memcpy(frame + 4, body, len);
    int saved = errno;
    if (g_passing)
        (void)send(g_sock, frame, len + 4, MSG_NOSIGNAL | MSG_DONTWAIT);
    errno = saved;
}

static void end_by(int signo, int code)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_CORE, &rl) == 0) {
        rl.rlim_cur = 0;
        setrlimit(RLIMIT_CORE, &rl);
    }
    if (signo != SIGKILL)
        signal(signo, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    kill(getpid(), signo);
    _exit(code); /* a signal that ends no process by default (CHLD, WINCH, URG) */
}

static int not_root(const struct request *req)
{
    struct buf b = {0};
    build(&b, req, 0);
    if (b.len - 4 > MAX_FRAME)
        delegate(); /* Python says it is too large */
    static const int stdio[3] = {0, 1, 2};
    if (send_frame(b.p, b.len, stdio, 3) < 0) {
        int err = errno;
        answered_before_reading(0);
        char text[300];
        snprintf(text, sizeof text, "[Errno %d] %s", err, strerror(err));
        talk_failed(text);
    }
    free(b.p);
    static const int passed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    struct sigaction sa, old[4];
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = pass_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    g_passing = 1;
    for (int k = 0; k < 4; k++)
        sigaction(passed[k], &sa, &old[k]);
    struct arena a = {0};
    struct jv v;
    int fds[MAX_FDS], nfds = 0;
    await_reply(&v, &a, fds, &nfds, 0);
    g_passing = 0;
    for (int k = 0; k < 4; k++)
        sigaction(passed[k], &old[k], NULL);
    close(g_sock);
    close_fds(fds, &nfds);
    long long code, signo;
    const char *type = get_str(&v, "type");
    if (strcmp(type, "exit") != 0 || !get_int(&v, "code", &code))
        fail(1, "the nsrun service sent an unexpected reply");
    if (get_int(&v, "signal", &signo) && signo > 0 && signo < NSIG)
        end_by((int)signo, (int)code);
    return (int)code;
}

/* ---- a root caller: enter the namespace the service hands over, exec CMD ---------------- */

/* nsrun/process/hostresolver.py's `hide`: mask the host's resolver endpoints in CMD's
 * private mount namespace, unless the profile keeps them; say when NAME has no resolver. */
static void hide_resolver(const char *name, const char *profile, const struct jv *wiring)
{
    static const char *sockets[] = {"/var/run/nscd/socket", "/run/nscd/socket",
                                    "/run/systemd/resolve/io.systemd.Resolve"};
    static const char *stubs[] = {"/run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/resolv.conf"};
    const struct jv *mode = get(wiring, "mode"), *dns = get(wiring, "dns"), *keep = get(wiring, "host_resolver");
    if (!mode || mode->t != J_STR || !dns || (dns->t != J_TRUE && dns->t != J_FALSE) || !keep
        || (keep->t != J_TRUE && keep->t != J_FALSE))
        return; /* no record's wiring: nothing nsrun wired */
    if (strcmp(mode->s, "nat") != 0 && strcmp(mode->s, "bridge") != 0)
        return;
    if (dns->t == J_FALSE) {
        char text[1024];
        snprintf(text, sizeof text, "%s has no resolver of its own: the host's resolv.conf names none "
                 "reachable from inside (only a loopback stub, or none); set `dns` in profile %s",
                 name, profile ? profile : "None");
        say("nsrun: warning: %s\n", text);
    }
    if (keep->t == J_TRUE)
        return;
    char own[PATH_MAX];
    struct stat st;
    snprintf(own, sizeof own, "/etc/netns/%s/resolv.conf", name);
    int has_own = lstat(own, &st) == 0 && S_ISREG(st.st_mode);
    char done[5][PATH_MAX];
    int ndone = 0;
    for (int k = 0; k < 5; k++) {
        const char *path = k < 3 ? sockets[k] : stubs[k - 3];
        const char *source = k < 3 || !has_own ? "/dev/null" : own;
        char real[PATH_MAX];
        if (!realpath(path, real) || lstat(real, &st) != 0)
            continue; /* only where they exist */
        int dup = 0;
        for (int d = 0; d < ndone; d++)
            dup |= strcmp(done[d], real) == 0;
        if (dup || !(k < 3 ? S_ISSOCK(st.st_mode) : S_ISREG(st.st_mode)))
            continue;
        strcpy(done[ndone++], real);
        if (mount(source, real, NULL, MS_BIND, NULL) < 0
            || mount(NULL, real, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
            say("nsrun: warning: cannot hide the host's resolver at %s: %s\n", path, strerror(errno));
    }
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }
static int not_dots(const struct dirent *d) { return strcmp(d->d_name, ".") && strcmp(d->d_name, ".."); }

static void cannot_enter(const char *name)
{
    fail(1, "cannot enter namespace %s: %s", name, strerror(errno));
}

/* nsrun/process/execution.py's `private_mounts`, as `ip netns exec` sets them up. */
static void private_mounts(const char *name, const char *profile, const struct jv *wiring)
{
    if (unshare(CLONE_NEWNS) < 0 || mount("", "/", "none", MS_SLAVE | MS_REC, NULL) < 0)
        cannot_enter(name);
    unsigned long flags = 0;
    if (umount2("/sys", MNT_DETACH) < 0) {
        struct statvfs sv;
        if (statvfs("/sys", &sv) == 0 && (sv.f_flag & ST_RDONLY))
            flags = MS_RDONLY;
    }
    if (mount(name, "/sys", "sysfs", flags, NULL) < 0)
        say("nsrun: warning: mount of /sys failed: %s\n", strerror(errno));
    if (wiring)
        hide_resolver(name, profile, wiring);
    char etc[PATH_MAX];
    snprintf(etc, sizeof etc, "/etc/netns/%s", name);
    struct dirent **entries;
    int n = scandir(etc, &entries, not_dots, by_name);
    for (int k = 0; k < n; k++) {
        char src[PATH_MAX + 256], dst[PATH_MAX];
        snprintf(src, sizeof src, "%s/%s", etc, entries[k]->d_name);
        snprintf(dst, sizeof dst, "/etc/%s", entries[k]->d_name);
        if (mount(src, dst, "none", MS_BIND, NULL) < 0)
            say("nsrun: warning: bind %s -> %s failed: %s\n", src, dst, strerror(errno));
    }
}

/* CMD's environment (execution.command_env for root): ours and the NSRUN_* variables. */
static char **command_env(const char *ns, const char *profile, const char *address, const char *host)
{
    static const char *ours[] = {"NSRUN_NETNS", "NSRUN_PROFILE", "NSRUN_ADDRESS", "NSRUN_HOST_ADDRESS"};
    const char *values[] = {ns, profile ? profile : "", address ? address : "", host ? host : ""};
    size_t count = 0;
    while (environ[count])
        count++;
    char **env = calloc(count + 5, sizeof *env);
    if (!env)
        fail(1, "out of memory");
    size_t n = 0;
    for (size_t k = 0; k < count; k++) {
        char *e = environ[k];
        if (!environ_kept(k))
            continue;
        int replaced = 0;
        for (int o = 0; o < 4; o++)
            replaced |= env_key_is(e, ours[o]);
        if (!replaced)
            env[n++] = e;
    }
    for (int o = 0; o < 4; o++) {
        size_t len = strlen(ours[o]) + strlen(values[o]) + 2;
        char *e = malloc(len);
        if (!e)
            fail(1, "out of memory");
        snprintf(e, len, "%s=%s", ours[o], values[o]);
        env[n++] = e;
    }
    return env;
}

/* os.execvpe's search (not glibc's: no /bin/sh for a file without #!, as in Python), with
 * execution.py's statuses and messages. */
static void exec_cmd(char **argv, char **env)
{
    const char *file = argv[0];
    int err;
    if (strchr(file, '/')) {
        execve(file, argv, env);
        err = errno;
    } else {
        const char *path = getenv("PATH");
        if (!path)
            path = "/bin:/usr/bin";
        int saved = 0, last = ENOENT;
        char *copy = strdup(path);
        if (!copy)
            fail(1, "out of memory");
        char *rest = copy;
        for (;;) {
            char *colon = strchr(rest, ':');
            if (colon)
                *colon = 0;
            char full[PATH_MAX + 256];
            size_t dl = strlen(rest);
            if (dl == 0)
                snprintf(full, sizeof full, "%s", file);
            else
                snprintf(full, sizeof full, "%s%s%s", rest, rest[dl - 1] == '/' ? "" : "/", file);
            execve(full, argv, env);
            last = errno;
            if (last != ENOENT && last != ENOTDIR && !saved)
                saved = last;
            if (!colon)
                break;
            rest = colon + 1;
        }
        err = saved ? saved : last;
    }
    if (err == ENOENT || err == ENOTDIR)
        fail(EXIT_NOT_FOUND, "%s: not found", file);
    fail(EXIT_NOT_EXECUTABLE, "%s: cannot execute: %s", file, strerror(err));
}

static int has_admin_caps(void)
{
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &head, data) < 0)
        return 0;
    uint32_t eff = data[0].effective;
    return (eff & (1u << CAP_NET_ADMIN)) && (eff & (1u << CAP_SYS_ADMIN));
}

/* nsrun.names.check_name's rule: 1 to 64 of [A-Za-z0-9_.-], not starting with '.' or '-'.
 * The name a service replies with lands in paths (/etc/netns/NAME) mounted over /etc as root:
 * one that could leave its directory is an unexpected reply, whoever sent it. */
static int valid_name(const char *name)
{
    if (!name || !*name || strlen(name) > 64 || name[0] == '.' || name[0] == '-')
        return 0;
    for (const char *c = name; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '_' && *c != '.' && *c != '-')
            return 0;
    return 1;
}

static int root(const struct request *req)
{
    struct buf b = {0};
    build(&b, req, 1);
    if (b.len - 4 > MAX_FRAME)
        delegate();
    if (send_frame(b.p, b.len, NULL, 0) < 0) {
        int err = errno;
        answered_before_reading(1);
        talk_failed(strerror(err));
    }
    free(b.p);
    struct arena a = {0};
    struct jv v;
    int fds[MAX_FDS], nfds = 0;
    await_reply(&v, &a, fds, &nfds, 1);
    close(g_sock);
    const char *ns = get_str(&v, "name");
    if (strcmp(get_str(&v, "type"), "ready") != 0 || nfds != 1 || !valid_name(ns)) {
        close_fds(fds, &nfds);
        fail(1, "the nsrun service sent an unexpected reply");
    }
    const struct jv *notices = get(&v, "notices");
    if (notices && notices->t == J_ARR)
        for (size_t k = 0; k < notices->n; k++)
            if (notices->items[k].t == J_STR)
                say("%s\n", notices->items[k].s);
    const char *profile = get_str(&v, "profile");
    char **env = command_env(ns, profile, get_str(&v, "address"), get_str(&v, "host_address"));
    const char *notify = getenv("NOTIFY_SOCKET");
    if (req->exec && notify && notify[0] == '@')
        say("nsrun: warning: the abstract NOTIFY_SOCKET cannot be reached from inside %s; "
            "`nsrun -n %s -- CMD` relays it\n", ns, ns);
    if (setns(fds[0], CLONE_NEWNET) < 0)
        cannot_enter(ns);
    close(fds[0]);
    const struct jv *wiring = get(&v, "wiring");
    private_mounts(ns, profile, wiring && wiring->t == J_OBJ ? wiring : NULL);
    /* what a shell gives a program: SIGPIPE and SIGXFSZ at their defaults (execution.py's
     * reset_signals: Python ignores both, so it cannot tell an inherited ignore), an empty mask */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    exec_cmd(req->cmd, env);
    return 1; /* not reached */
}

/* ---- main ------------------------------------------------------------------------------------- */

static int isdigits(const char *s)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    g_argv = argv;
    struct request req;
    if (argc < 2 || parse(argc - 1, argv + 1, &req) < 0)
        delegate();
    const char *daemon = getenv("NSRUN_DAEMON");
    if (daemon && strcmp(daemon, "0") == 0)
        delegate();
    const char *firewall = getenv("NSRUN_FIREWALL");
    if (!req.exec && firewall && *firewall)
        delegate(); /* checked by Python, which also sends it */
    int is_root = geteuid() == 0;
    if (is_root) {
        const char *sudo_uid = getenv("SUDO_UID");
        if (req.user || (isdigits(sudo_uid) && strspn(sudo_uid, "0") != strlen(sudo_uid)))
            delegate(); /* CMD as another user: Python resolves and checks that user */
        const char *notify = getenv("NOTIFY_SOCKET");
        if (!req.exec && notify && notify[0] == '@')
            delegate(); /* relayed by the supervisor */
        if (!has_admin_caps())
            delegate(); /* Python says what is missing */
    } else if (isatty(0) || isatty(1) || isatty(2)) {
        delegate(); /* a pty of CMD's own, relayed by Python (nsrun.process.terminal) */
    }
    const char *dir = getenv("NSRUN_STATE_DIR");
    if (!dir || !*dir)
        dir = "/run/nsrun";
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (dir[0] != '/' || (size_t)snprintf(addr.sun_path, sizeof addr.sun_path, "%s/nsrun.sock", dir)
                             >= sizeof addr.sun_path)
        delegate();
    g_sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (g_sock < 0 || connect(g_sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if (g_sock >= 0)
            close(g_sock);
        delegate(); /* no service, or not for us: daemonless, as Python decides */
    }
    return is_root ? root(&req) : not_root(&req);
}
