/* SPDX-License-Identifier: MIT */
/* Tests of AWS Signature Version 4 (src/hc_sigv4.c): the requests of AWS's SigV4 test suite
 * (aws-sig-v4-test-suite, 2015-08-30: key AKIDEXAMPLE, region us-east-1, service "service"),
 * Google's GetCallerIdentity request with and without a session token, the canonical request and
 * string to sign of some of them, the query decoded and re-encoded whatever encoding it came in,
 * the clock's date when none is given, and every refusal with its message. The expected values
 * were computed by botocore (spec/support/sigv4_botocore.py, Debian's python3-botocore) and, for
 * the test suite, agree with the signatures AWS published. Then a replay of the fuzz regressions
 * and seeds through fuzz/fuzz_sigv4.c's checks (run from the repository root: test_sigv4
 * spec/fixtures/fuzz/sigv4 fuzz/corpus/sigv4). Prints one line per failure and
 * "N passed, N failed"; exits 1 on failure. */
#define _POSIX_C_SOURCE 200809L

#include "../../fuzz/fuzz_sigv4.c"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "hc_sigv4.h"

struct tstate {
    int passed;
    int failed;
};
#include "hc_test.h"

#define KEY "AKIDEXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define DATE "20150830T123600Z"
#define STS_TOKEN                                                                                  \
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfp" \
    "SPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPky" \
    "QDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+" \
    "scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
#define UNRESERVED "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* ---- the AWS test suite -------------------------------------------------------------- */

typedef struct suite_case {
    const char *name, *method, *path, *query;
    struct { const char *name, *value; } headers[4];
    size_t nheaders;
    const char *payload, *token, *signature;
} suite_case;

static const suite_case SUITE[] = {
    {"get-vanilla", "GET", "/", NULL, {{0}}, 0, "", NULL,
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"get-vanilla-query", "GET", "/", "", {{0}}, 0, "", NULL,
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"get-vanilla-empty-query-key", "GET", "/", "Param1=value1", {{0}}, 0, "", NULL,
     "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb"},
    {"get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1", {{0}}, 0, "",
     NULL, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
    {"get-vanilla-query-order-value", "GET", "/", "Param1=value2&Param1=value1", {{0}}, 0, "",
     NULL, "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"},
    {"query values sorted byte by byte (V before v)", "GET", "/", "Param1=value2&Param1=Value1",
     {{0}}, 0, "", NULL, "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1"},
    {"get-vanilla-query-unreserved", "GET", "/", UNRESERVED "=" UNRESERVED, {{0}}, 0, "", NULL,
     "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"},
    {"get-vanilla-utf8-query", "GET", "/", "%E1%88%B4=bar", {{0}}, 0, "", NULL,
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"},
    {"get-vanilla-utf8-query, raw bytes", "GET", "/", "\xe1\x88\xb4=bar", {{0}}, 0, "", NULL,
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"},
    {"get-vanilla-utf8-query, lower-case hex", "GET", "/", "%e1%88%b4=bar", {{0}}, 0, "", NULL,
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"},
    /* Empty parts are skipped, as Google's libraries read a query (Python's parse_qs, Go's
     * url.Query); botocore's reading of a raw URL would sign them as "=". */
    {"get-vanilla-empty-query-key, empty parts", "GET", "/", "&Param1=value1&", {{0}}, 0, "",
     NULL, "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb"},
    {"get-header-key-duplicate", "GET", "/", NULL,
     {{"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}}, 3, "", NULL,
     "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"},
    {"get-header-value-order", "GET", "/", NULL,
     {{"My-Header1", "value4"}, {"My-Header1", "value1"}, {"My-Header1", "value3"},
      {"My-Header1", "value2"}},
     4, "", NULL, "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"},
    {"get-header-value-trim", "GET", "/", NULL,
     {{"My-Header1", " value1"}, {"My-Header2", " \"a   b   c\""}}, 2, "", NULL,
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
    {"get-header-value-trim, tabs", "GET", "/", NULL,
     {{"My-Header1", "\tvalue1 \t"}, {"My-Header2", "\"a \t b\t\tc\""}}, 2, "", NULL,
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
    {"get-unreserved", "GET", "/" UNRESERVED, NULL, {{0}}, 0, "", NULL,
     "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"},
    {"get-utf8", "GET", "/\xe1\x88\xb4", NULL, {{0}}, 0, "", NULL,
     "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"},
    {"get-relative", "GET", "/example/..", NULL, {{0}}, 0, "", NULL,
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"get-relative-relative", "GET", "/example1/example2/../..", NULL, {{0}}, 0, "", NULL,
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"get-slash", "GET", "//", NULL, {{0}}, 0, "", NULL,
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"get-slash-dot-slash", "GET", "/./", NULL, {{0}}, 0, "", NULL,
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"get-slash-pointless-dot", "GET", "/./example", NULL, {{0}}, 0, "", NULL,
     "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5"},
    {"get-slashes", "GET", "//example//", NULL, {{0}}, 0, "", NULL,
     "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84"},
    {"get-space", "GET", "/example space/", NULL, {{0}}, 0, "", NULL,
     "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"},
    {"post-vanilla", "POST", "/", NULL, {{0}}, 0, "", NULL,
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
    {"post-vanilla, no path", "POST", NULL, NULL, {{0}}, 0, "", NULL,
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
    {"post-vanilla-query", "POST", "/", "Param1=value1", {{0}}, 0, "", NULL,
     "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"},
    {"post-header-key-sort", "POST", "/", NULL, {{"My-Header1", "value1"}}, 1, "", NULL,
     "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"},
    {"post-header-key-case", "POST", "/", NULL, {{"MY-HEADER1", "value1"}}, 1, "", NULL,
     "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"},
    {"post-header-value-case", "POST", "/", NULL, {{"My-Header1", "VALUE1"}}, 1, "", NULL,
     "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"},
    {"post-x-www-form-urlencoded", "POST", "/", NULL,
     {{"Content-Type", "application/x-www-form-urlencoded"}}, 1, "Param1=value1", NULL,
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"},
    {"post-x-www-form-urlencoded-parameters", "POST", "/", NULL,
     {{"Content-Type", "application/x-www-form-urlencoded; charset=utf8"}}, 1, "Param1=value1",
     NULL, "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe"},
    {"post-sts-header-before", "POST", "/", NULL, {{0}}, 0, "", STS_TOKEN,
     "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"},
};

/* A request of the test suite's shape. */
static hc_sigv4_request suite_request(const suite_case *c, hc_sigv4_header *h)
{
    hc_sigv4_request r;
    size_t i;
    memset(&r, 0, sizeof r);
    r.method = c->method;
    r.host = "example.amazonaws.com";
    r.path = c->path;
    r.query = c->query;
    for (i = 0; i < c->nheaders; i++) {
        h[i].name = c->headers[i].name;
        h[i].name_len = strlen(c->headers[i].name);
        h[i].value = c->headers[i].value;
        h[i].value_len = strlen(c->headers[i].value);
    }
    r.headers = h;
    r.nheaders = c->nheaders;
    r.payload = c->payload;
    r.payload_len = strlen(c->payload);
    r.region = "us-east-1";
    r.service = "service";
    r.amz_date = DATE;
    r.access_key = KEY;
    r.secret = SECRET;
    r.secret_len = strlen(SECRET);
    r.session_token = c->token;
    return r;
}

static void test_suite(tstate *t)
{
    size_t i;
    for (i = 0; i < sizeof SUITE / sizeof SUITE[0]; i++) {
        hc_sigv4_header h[4];
        hc_sigv4_request r = suite_request(&SUITE[i], h);
        hc_sigv4_result out;
        char err[HC_SIGV4_ERRLEN] = "";
        int rc = hc_sigv4_sign(&r, &out, err);
        check(t, rc == 0, "%s: signs (%s)", SUITE[i].name, err);
        check(t, rc == 0 && strcmp(out.signature, SUITE[i].signature) == 0, "%s: signature %s",
              SUITE[i].name, rc == 0 ? out.signature : "-");
        check(t, ERR_peek_error() == 0, "%s: OpenSSL's error queue is empty", SUITE[i].name);
        hc_sigv4_result_free(&out);
    }
}

static const suite_case *find_case(const char *name)
{
    size_t i;
    for (i = 0; i < sizeof SUITE / sizeof SUITE[0]; i++)
        if (strcmp(SUITE[i].name, name) == 0)
            return &SUITE[i];
    abort();
}

/* The texts of two cases in full, as the test suite's .creq/.sts/.authz files have them. */
static void test_texts(tstate *t)
{
    hc_sigv4_header h[4];
    hc_sigv4_request r = suite_request(find_case("get-header-value-trim"), h);
    hc_sigv4_result out;
    char err[HC_SIGV4_ERRLEN];
    check(t, hc_sigv4_sign(&r, &out, err) == 0, "get-header-value-trim signs");
    check(t, strcmp(out.canonical_request.data,
                    "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\n"
                    "my-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\n"
                    "host;my-header1;my-header2;x-amz-date\n" EMPTY_SHA256) == 0,
          "get-header-value-trim: canonical request\n%s", out.canonical_request.data);
    check(t, strcmp(out.signed_headers.data, "host;my-header1;my-header2;x-amz-date") == 0,
          "get-header-value-trim: signed headers %s", out.signed_headers.data);
    check(t, strcmp(out.amz_date, DATE) == 0, "the date given is the date signed");
    hc_sigv4_result_free(&out);

    r = suite_request(find_case("post-x-www-form-urlencoded"), h);
    check(t, hc_sigv4_sign(&r, &out, err) == 0, "post-x-www-form-urlencoded signs");
    check(t, strcmp(out.authorization.data,
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/"
                    "aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="
                    "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a") == 0,
          "post-x-www-form-urlencoded: Authorization %s", out.authorization.data);
    check(t, strstr(out.canonical_request.data,
                    "\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e") != NULL,
          "post-x-www-form-urlencoded: the payload's SHA-256 ends the canonical request");
    hc_sigv4_result_free(&out);
}

/* ---- Google's GetCallerIdentity request ---------------------------------------------- */

#define AUDIENCE                                                                                   \
  "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/pool/providers/" \
  "aws"
#define SESSION "IQoJb3JpZ2luX2VjEXAMPLETOKEN/+="

static hc_sigv4_request caller_identity(hc_sigv4_header *h)
{
    hc_sigv4_request r;
    memset(&r, 0, sizeof r);
    h->name = "x-goog-cloud-target-resource";
    h->name_len = strlen(h->name);
    h->value = AUDIENCE;
    h->value_len = strlen(AUDIENCE);
    r.method = "POST";
    r.host = "sts.us-east-1.amazonaws.com";
    r.path = "/";
    r.query = "Action=GetCallerIdentity&Version=2011-06-15";
    r.headers = h;
    r.nheaders = 1;
    r.region = "us-east-1";
    r.service = "sts";
    r.amz_date = DATE;
    r.access_key = KEY;
    r.secret = SECRET;
    r.secret_len = strlen(SECRET);
    r.session_token = SESSION;
    return r;
}

static void test_caller_identity(tstate *t)
{
    hc_sigv4_header h;
    hc_sigv4_request r = caller_identity(&h);
    hc_sigv4_result out;
    char err[HC_SIGV4_ERRLEN];
    check(t, hc_sigv4_sign(&r, &out, err) == 0, "GetCallerIdentity signs (%s)", err);
    check(t,
          strcmp(out.canonical_request.data,
                 "POST\n/\nAction=GetCallerIdentity&Version=2011-06-15\n"
                 "host:sts.us-east-1.amazonaws.com\nx-amz-date:20150830T123600Z\n"
                 "x-amz-security-token:" SESSION "\n"
                 "x-goog-cloud-target-resource:" AUDIENCE "\n\n"
                 "host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource\n" EMPTY_SHA256)
              == 0,
          "GetCallerIdentity: canonical request\n%s", out.canonical_request.data);
    check(t, strcmp(out.string_to_sign.data,
                    "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/sts/aws4_request\n"
                    "7c6c07570c588ff357a8413b64da46ffc73ddd217be33f818ae81e548c2000cd") == 0,
          "GetCallerIdentity: string to sign\n%s", out.string_to_sign.data);
    check(t,
          strcmp(out.authorization.data,
                 "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sts/aws4_request, "
                 "SignedHeaders=host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource, "
                 "Signature=30baae3c9352a868cb58d084a688028a290c276d67f75bfe10cf0e109c81c8cb")
              == 0,
          "GetCallerIdentity: Authorization %s", out.authorization.data);
    hc_sigv4_result_free(&out);

    r.session_token = NULL;
    check(t, hc_sigv4_sign(&r, &out, err) == 0, "GetCallerIdentity without a token signs");
    check(t,
          strcmp(out.signature, "3af9138d6484ba46189f1bdf8229261d0c29e40b1837154a5f5fadda48cbb85f")
              == 0,
          "GetCallerIdentity without a token: signature %s", out.signature);
    check(t, strstr(out.canonical_request.data, "x-amz-security-token") == NULL,
          "no token, no x-amz-security-token");
    hc_sigv4_result_free(&out);
    r.session_token = "";
    check(t,
          hc_sigv4_sign(&r, &out, err) == 0
              && strcmp(out.signature,
                        "3af9138d6484ba46189f1bdf8229261d0c29e40b1837154a5f5fadda48cbb85f")
                  == 0,
          "an empty token is no token");
    hc_sigv4_result_free(&out);
}

/* '+' is a plus in SigV4's reading of a query (not a space), a lone '=' an empty name. */
static void test_query_forms(tstate *t)
{
    static const struct { const char *query, *canonical; } cases[] = {
        {"a=b+c", "a=b%2Bc"},
        {"a=b%20c", "a=b%20c"},
        {"a", "a="},
        {"=x&b=", "=x&b="},
        {"b=2&a=1&a=0", "a=0&a=1&b=2"},
        {"%7e=%41", "~=A"},
        {"k=%2F%2f/", "k=%2F%2F%2F"},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hc_sigv4_header h;
        hc_sigv4_request r = caller_identity(&h);
        hc_sigv4_result out;
        char err[HC_SIGV4_ERRLEN], want[128];
        r.query = cases[i].query;
        snprintf(want, sizeof want, "POST\n/\n%s\nhost:", cases[i].canonical);
        check(t, hc_sigv4_sign(&r, &out, err) == 0, "query %s signs", cases[i].query);
        check(t, out.canonical_request.data != NULL &&
                 strncmp(out.canonical_request.data, want, strlen(want)) == 0,
              "query %s: canonical %s", cases[i].query,
              out.canonical_request.data ? out.canonical_request.data : "-");
        hc_sigv4_result_free(&out);
    }
}

/* No date given: now, in the documented form; signed twice with that date, the same. */
static void test_clock(tstate *t)
{
    hc_sigv4_header h;
    hc_sigv4_request r = caller_identity(&h);
    hc_sigv4_result a, b;
    char err[HC_SIGV4_ERRLEN];
    size_t i;
    int shape = 1;
    r.amz_date = NULL;
    check(t, hc_sigv4_sign(&r, &a, err) == 0, "signs at the clock's time");
    for (i = 0; i < 16; i++)
        shape &= i == 8 ? a.amz_date[i] == 'T'
            : i == 15   ? a.amz_date[i] == 'Z'
                        : (a.amz_date[i] >= '0' && a.amz_date[i] <= '9');
    check(t, shape && a.amz_date[16] == '\0' && strncmp(a.amz_date, "20", 2) == 0,
          "the clock's date %s", a.amz_date);
    r.amz_date = a.amz_date;
    check(t, hc_sigv4_sign(&r, &b, err) == 0 && strcmp(a.signature, b.signature) == 0,
          "the same request and date sign the same");
    hc_sigv4_result_free(&b);
    hc_sigv4_result_free(&a);
}

/* ---- refusals ------------------------------------------------------------------------ */

static void test_refusals(tstate *t)
{
    hc_sigv4_header many[HC_SIGV4_MAX_HEADERS + 1];
    size_t i;
    for (i = 0; i < 14; i++) {
        hc_sigv4_header h[2];
        hc_sigv4_request r = caller_identity(h);
        hc_sigv4_result out;
        char err[HC_SIGV4_ERRLEN] = "";
        const char *want = NULL;
        switch (i) {
        case 0: r.amz_date = "2015-08-30T12:36"; want = "the date must be YYYYMMDDTHHMMSSZ"; break;
        case 1: r.amz_date = "20150830X123600Z"; want = "the date must be YYYYMMDDTHHMMSSZ"; break;
        case 2:
            h[0].name = "Bad Name";
            h[0].name_len = 8;
            want = "a header name must be an HTTP token (letters, digits, '-', ...)";
            break;
        case 3:
            h[0].value = "a\r\nInjected: 1";
            h[0].value_len = strlen(h[0].value);
            want = "a header value must be at most 16384 bytes without control characters";
            break;
        case 4:
            h[0].name = "X-Amz-Date";
            h[0].name_len = 10;
            want =
                "host, authorization, x-amz-date and x-amz-security-token are set by the signer, "
                "not given as headers";
            break;
        case 5:
            r.query = "a=%zz";
            want = "the query has a '%' not followed by two hex digits";
            break;
        case 6:
            r.query = "a=%4";
            want = "the query has a '%' not followed by two hex digits";
            break;
        case 7: r.secret_len = 0; want = "the secret access key must be 1 to 1024 bytes"; break;
        case 8: r.method = "post"; want = "the method must be an upper-case HTTP token"; break;
        case 9:
            r.region = "us/east-1";
            want = "the region must be letters, digits, '-', '.', '_' or '~' (1 to 64)";
            break;
        case 10:
            r.access_key = "AKID/EXAMPLE";
            want = "the access key id must be 1 to 128 printable characters without '/', ',', '=' "
                   "or space";
            break;
        case 11: r.path = "example"; want = "the path must start with '/'"; break;
        case 12:
            r.session_token = "tok\nen";
            want = "the session token must be at most 16384 bytes without control characters";
            break;
        case 13:
            for (size_t k = 0; k < HC_SIGV4_MAX_HEADERS + 1; k++)
                many[k] = h[0];
            r.headers = many;
            r.nheaders = HC_SIGV4_MAX_HEADERS + 1;
            want = "too many headers to sign (at most 64)";
            break;
        }
        check(t, hc_sigv4_sign(&r, &out, err) == -1, "refusal %zu refused", i);
        check(t, strcmp(err, want) == 0, "refusal %zu: message '%s'", i, err);
        check(t, out.authorization.data == NULL && out.canonical_request.data == NULL &&
                 out.signature[0] == '\0', "refusal %zu: nothing in the result", i);
        check(t, ERR_peek_error() == 0, "refusal %zu: OpenSSL's error queue is empty", i);
        hc_sigv4_result_free(&out);
    }
}

/* ---- fuzz replay --------------------------------------------------------------------- */

static void replay(tstate *t, const char *path, const unsigned char *data, size_t n)
{
    (void)path;
    LLVMFuzzerTestOneInput(data, n); /* aborts on a failed check */
    check(t, 1, "replayed");
}

int main(int argc, char **argv)
{
    tstate t = {0, 0};
    int a;
    test_suite(&t);
    test_texts(&t);
    test_caller_identity(&t);
    test_query_forms(&t);
    test_clock(&t);
    test_refusals(&t);
    for (a = 1; a < argc; a++)
        hc_test_replay(&t, argv[a], replay);
    return hc_test_summary(&t);
}
