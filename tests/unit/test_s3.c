/* SigV4 signing (include/ltxfs/sigv4.h) against AWS's published examples,
 * and the S3 XML documents (include/ltxfs/s3xml.h). */
#include "unit.h"

#include "ltxfs/s3xml.h"
#include "ltxfs/sigv4.h"

#include <errno.h>
#include <string.h>

static const char AKID[] = "AKIAIOSFODNN7EXAMPLE";
static const char SECRET[] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
static const char EMPTY_SHA[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/* AWS S3 docs, "Example: GET Object" (sig-v4-header-based-auth). */
static void test_aws_get_object(void)
{
	struct sigv4_header h[] = {{"Range", "bytes=0-9"}};
	struct sigv4_req r = {.method = "GET",
			      .uri = "/test.txt",
			      .query = "",
			      .host = "examplebucket.s3.amazonaws.com",
			      .amz_date = "20130524T000000Z",
			      .payload_sha256 = EMPTY_SHA,
			      .headers = h,
			      .n_headers = 1,
			      .region = "us-east-1",
			      .service = "s3",
			      .access_key = AKID,
			      .secret_key = SECRET};
	char out[512];
	char *creq = NULL;
	CHECK(sigv4_authorization(&r, out, sizeof(out), &creq) == 0);
	CHECK(
	    strcmp(out,
		   "AWS4-HMAC-SHA256 "
		   "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
		   "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
		   "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41") ==
	    0);
	CHECK(creq &&
	      strcmp(creq,
		     "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\n"
		     "range:bytes=0-9\n"
		     "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b"
		     "934ca495991b7852b855\nx-amz-date:20130524T000000Z\n\n"
		     "host;range;x-amz-content-sha256;x-amz-date\n"
		     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
	free(creq);
	/* a wrong secret gives another signature */
	r.secret_key = "x";
	CHECK(sigv4_authorization(&r, out, sizeof(out), NULL) == 0);
	CHECK(strstr(out, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41") ==
	      NULL);
	/* too small a buffer */
	r.secret_key = SECRET;
	CHECK(sigv4_authorization(&r, out, 40, NULL) == -ENAMETOOLONG);
}

/* AWS S3 docs, "Example: GET Bucket (List Objects)": a query string. */
static void test_aws_list_objects(void)
{
	struct sigv4_req r = {.method = "GET",
			      .uri = "/",
			      .query = "max-keys=2&prefix=J",
			      .host = "examplebucket.s3.amazonaws.com",
			      .amz_date = "20130524T000000Z",
			      .payload_sha256 = EMPTY_SHA,
			      .region = "us-east-1",
			      .service = "s3",
			      .access_key = AKID,
			      .secret_key = SECRET};
	char out[512];
	CHECK(sigv4_authorization(&r, out, sizeof(out), NULL) == 0);
	CHECK(strstr(out,
		     "SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature="
		     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7") != NULL);
}

static void test_encode_and_hash(void)
{
	char *e = sigv4_uri_encode("a/b c~d%é", true);
	CHECK(e && strcmp(e, "a/b%20c~d%25%C3%A9") == 0);
	free(e);
	e = sigv4_uri_encode("a/b", false);
	CHECK(e && strcmp(e, "a%2Fb") == 0);
	free(e);
	char h[SIGV4_SHA256_HEX];
	sigv4_sha256_hex("", 0, h);
	CHECK(strcmp(h, EMPTY_SHA) == 0);
	/* duplicate header names are refused */
	struct sigv4_header dup[] = {{"Host", "x"}};
	struct sigv4_req r = {.method = "GET",
			      .uri = "/",
			      .query = "",
			      .host = "h",
			      .amz_date = "20130524T000000Z",
			      .payload_sha256 = EMPTY_SHA,
			      .headers = dup,
			      .n_headers = 1,
			      .region = "r",
			      .service = "s3",
			      .access_key = "a",
			      .secret_key = "b"};
	char out[512];
	CHECK(sigv4_authorization(&r, out, sizeof(out), NULL) == -EINVAL);
}

static void test_xml_list(void)
{
	static const char doc[] =
	    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	    "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
	    "<Name>b</Name><Prefix>p</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>"
	    "<IsTruncated>true</IsTruncated>"
	    "<Contents><Key>p/a&amp;b.ltx</Key><LastModified>2026-12-06T02:00:00.000Z</"
	    "LastModified>"
	    "<ETag>&quot;abc&quot;</ETag><Size>1152</Size><StorageClass>STANDARD</StorageClass>"
	    "</Contents>"
	    "<Contents><Key>p/&#x41;&#66;</Key><Size>0</Size></Contents>"
	    "<NextContinuationToken>tok/+=</NextContinuationToken>"
	    "</ListBucketResult>";
	struct s3xml_list l;
	CHECK(s3xml_parse_list(doc, strlen(doc), &l) == 0);
	CHECK(l.n == 2);
	CHECK(l.truncated);
	CHECK(l.next_token && strcmp(l.next_token, "tok/+=") == 0);
	if (l.n == 2) {
		CHECK(strcmp(l.objs[0].key, "p/a&b.ltx") == 0);
		CHECK(l.objs[0].size == 1152);
		CHECK(strcmp(l.objs[0].etag, "\"abc\"") == 0);
		CHECK(strcmp(l.objs[0].last_modified, "2026-12-06T02:00:00.000Z") == 0);
		CHECK(strcmp(l.objs[1].key, "p/AB") == 0);
		CHECK(l.objs[1].size == 0);
	}
	s3xml_list_release(&l);
	static const char empty[] = "<ListBucketResult><IsTruncated>false</IsTruncated>"
				    "<KeyCount>0</KeyCount></ListBucketResult>";
	CHECK(s3xml_parse_list(empty, strlen(empty), &l) == 0);
	CHECK(l.n == 0 && !l.truncated && !l.next_token);
	s3xml_list_release(&l);
	static const char *const bad[] = {
	    "<Error><Code>x</Code></Error>",
	    "<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>",
	    "<ListBucketResult><Contents><Key>a&bogus;</Key></Contents></ListBucketResult>",
	    "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
	    "<ListBucketResult><Contents><Key>a</Key>",
	    "<ListBucketResult><Contents><Key>&#0;</Key></Contents></ListBucketResult>",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK(s3xml_parse_list(bad[i], strlen(bad[i]), &l) == -EBADMSG);
		s3xml_list_release(&l);
	}
}

static void test_xml_error(void)
{
	static const char doc[] =
	    "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>"
	    "<Message>The request signature we calculated does not match &lt;x&gt;</Message>"
	    "<RequestId>1</RequestId></Error>";
	char code[64], msg[256];
	CHECK(s3xml_parse_error(doc, strlen(doc), code, sizeof(code), msg, sizeof(msg)) == 0);
	CHECK(strcmp(code, "SignatureDoesNotMatch") == 0);
	CHECK(strcmp(msg, "The request signature we calculated does not match <x>") == 0);
	CHECK(s3xml_parse_error("nope", 4, code, sizeof(code), msg, sizeof(msg)) == -EBADMSG);
	CHECK(code[0] == '\0');
}

/* DeleteObjects: Content-MD5 (RFC 1321's test vector), and a DeleteResult
 * read with the error parser: an <Error> inside names a key that stayed, no
 * <Error> means every key went. */
static void test_delete_objects(void)
{
	unsigned char md[16];
	static const unsigned char abc[16] = {0x90, 0x01, 0x50, 0x98, 0x3c, 0xd2, 0x4f, 0xb0,
					      0xd6, 0x96, 0x3f, 0x7d, 0x28, 0xe1, 0x7f, 0x72};
	sigv4_md5("abc", 3, md);
	CHECK(memcmp(md, abc, 16) == 0);
	const char ok[] = "<?xml version=\"1.0\"?><DeleteResult xmlns=\"x\"></DeleteResult>";
	const char bad[] = "<DeleteResult><Error><Key>a/b</Key><Code>AccessDenied</Code>"
			   "<Message>no &amp; no</Message></Error></DeleteResult>";
	char code[64], msg[128];
	CHECK(s3xml_parse_error(ok, strlen(ok), code, sizeof(code), msg, sizeof(msg)) == -EBADMSG);
	CHECK(s3xml_parse_error(bad, strlen(bad), code, sizeof(code), msg, sizeof(msg)) == 0);
	CHECK(strcmp(code, "AccessDenied") == 0 && strcmp(msg, "no & no") == 0);
}

int main(void)
{
	RUN(test_aws_get_object);
	RUN(test_aws_list_objects);
	RUN(test_encode_and_hash);
	RUN(test_xml_list);
	RUN(test_xml_error);
	RUN(test_delete_objects);
	return UNIT_DONE();
}
