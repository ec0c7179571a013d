/*
 * layer_check.c - the main() of the per-layer link checks (src/meson.build).
 *
 * Each check links every object of one layer library (link_whole) with only
 * the libraries of the layers below it. The program never runs anything: it
 * exists so that the linker resolves every symbol the layer uses, and fails
 * the build when one of them lives in a layer above.
 */
int main(void)
{
	return 0;
}
