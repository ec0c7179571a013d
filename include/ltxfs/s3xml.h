/*
 * s3xml.h - the two S3 XML documents ltxfs reads: a ListObjectsV2 result
 * and an error body (formats layer).
 *
 * Not a general XML parser: it finds the elements these documents define
 * (ListBucketResult: Contents{Key, Size, ETag, LastModified}, IsTruncated,
 * NextContinuationToken; Error: Code, Message), decodes the five predefined
 * entities and numeric character references in their text, and ignores
 * everything else (attributes, namespaces, other elements, the prolog).
 * The input is untrusted bytes from the network: every length is bounded
 * (S3XML_MAX_OBJECTS per page, S3XML_MAX_TEXT per value) and the parser is
 * a fuzz target (tests/fuzz/fuzz_s3xml.c).
 *
 * Functions return 0 or -errno: -EBADMSG for a document that is not the one
 * expected or breaks a bound, -ENOMEM. Pure code, thread-safe.
 */
#ifndef LTXFS_S3XML_H
#define LTXFS_S3XML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define S3XML_MAX_OBJECTS 10000
#define S3XML_MAX_TEXT	  4096

struct s3xml_object {
	char *key;	     /* malloc'd */
	uint64_t size;
	char *etag;	     /* malloc'd, quotes kept as S3 sends them; "" when absent */
	char *last_modified; /* malloc'd ISO 8601; "" when absent */
};

struct s3xml_list {
	struct s3xml_object *objs; /* malloc'd array of n */
	size_t n;
	bool truncated;
	char *next_token; /* malloc'd, NULL when absent */
};

/* Parse a ListBucketResult (ListObjectsV2). *ret is zeroed first; release it in any case. */
int s3xml_parse_list(const char *xml, size_t len, struct s3xml_list *ret);
/* Free what l holds and zero it. NULL ok. */
void s3xml_list_release(struct s3xml_list *l);

/*
 * Parse an <Error> body: its Code and Message into code/msg (cut to their
 * sizes; "" when absent). -EBADMSG when there is no <Error> element.
 */
int s3xml_parse_error(const char *xml, size_t len, char *code, size_t code_n, char *msg,
		      size_t msg_n);

#endif
