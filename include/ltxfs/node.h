/*
 * node.h - the life of a node: `ltxfs mount` once its flags are parsed and
 * its configuration is loaded (top layer, beside main.c).
 */
#ifndef LTXFS_NODE_H
#define LTXFS_NODE_H

#include "ltxfs/config.h"

/*
 * Run the node described by cfg until SIGINT or SIGTERM, the end of the
 * supervised command, or the loss of the mount: start everything, run the
 * exec commands (cmd, the argument vector after `mount --`, replaces the
 * configured ones; NULL: none), supervise, and shut down in reverse order.
 * Returns the exit status: 0 after a clean stop, 1 for a runtime error, 2
 * for a configuration error found at start-up, or the command's own
 * status. Called on the main thread before any other thread exists; it
 * blocks SIGINT, SIGTERM, SIGHUP and SIGCHLD for the whole process. cfg
 * is borrowed and stays the caller's to release.
 */
int node_run(const struct config *cfg, char **cmd);

#endif
