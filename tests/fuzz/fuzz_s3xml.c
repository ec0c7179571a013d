/* libFuzzer target: the S3 XML documents (s3xml.c), untrusted bytes from the network. */
#include "ltxfs/s3xml.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct s3xml_list l;
	char code[64], msg[256];
	if (s3xml_parse_list((const char *)data, size, &l) == 0) {
		for (size_t i = 0; i < l.n; i++)
			if (!l.objs[i].key[0] || strlen(l.objs[i].key) > S3XML_MAX_TEXT)
				__builtin_trap();
	}
	s3xml_list_release(&l);
	s3xml_parse_error((const char *)data, size, code, sizeof(code), msg, sizeof(msg));
	return 0;
}
