/*
 * bench_loopback - the CPU cost of one TCP send on loopback, without ltxfs:
 * the floor under what streaming to a replica costs a primary.
 *
 *   bench_loopback SIZE GAP_US COUNT [SENDER_CPU RECEIVER_CPU]
 *
 * A sender thread writes COUNT messages of SIZE bytes to a TCP connection on
 * 127.0.0.1 (TCP_NODELAY, as the primary's stream sockets), one every GAP_US
 * microseconds (0: back to back); a receiver thread reads them with blocking
 * recv, as a replica's stream reader does, so that each send finds it asleep
 * unless the messages come faster than it reads. With the two CPUs given,
 * each thread is pinned to its own, as bench_fanout.py --pin pins a primary
 * and its replicas.
 *
 * Prints one line: "SEND_US ITER_US", the sender thread's CPU time
 * (CLOCK_THREAD_CPUTIME_ID) spent inside send() per message, and its CPU time
 * per message in all, which adds its own wake-up from the sleep between
 * messages. On loopback the kernel runs the receiving side of TCP in the
 * sender's send() (the softirq and waking the reader are charged to the
 * sender), so SEND_US is what one send of these bytes costs whoever sends
 * them, before any work of ltxfs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct receiver {
	int fd;
	int cpu;
};

static int pin(int cpu)
{
	cpu_set_t set;
	if (cpu < 0)
		return 0;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static double thread_cpu_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void *receive(void *arg)
{
	struct receiver *rx = arg;
	static char buf[1 << 20];
	if (pin(rx->cpu) < 0)
		return (void *)1;
	for (;;) {
		ssize_t n = recv(rx->fd, buf, sizeof(buf), 0);
		if (n == 0)
			return NULL;
		if (n < 0 && errno != EINTR)
			return (void *)1;
	}
}

static int connect_pair(int *ret_tx, int *ret_rx)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int one = 1, r = -1;
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int tx = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int rx = -1;
	if (lfd < 0 || tx < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(lfd, 1) < 0 || getsockname(lfd, (struct sockaddr *)&a, &alen) < 0 ||
	    connect(tx, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    (rx = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0 ||
	    setsockopt(tx, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		goto out;
	*ret_tx = tx;
	*ret_rx = rx;
	tx = rx = -1;
	r = 0;
out:
	if (lfd >= 0)
		close(lfd);
	if (tx >= 0)
		close(tx);
	if (rx >= 0)
		close(rx);
	return r;
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 6) {
		fprintf(stderr,
			"usage: bench_loopback SIZE GAP_US COUNT [SENDER_CPU RECEIVER_CPU]\n");
		return 2;
	}
	size_t size = strtoul(argv[1], NULL, 10);
	long gap_us = strtol(argv[2], NULL, 10);
	long count = strtol(argv[3], NULL, 10);
	int tx_cpu = argc == 6 ? atoi(argv[4]) : -1;
	struct receiver rx = {.fd = -1, .cpu = argc == 6 ? atoi(argv[5]) : -1};
	if (size == 0 || gap_us < 0 || count <= 0) {
		fprintf(stderr, "bench_loopback: SIZE and COUNT must be positive, GAP_US >= 0\n");
		return 2;
	}
	int tx;
	if (connect_pair(&tx, &rx.fd) < 0) {
		perror("bench_loopback: loopback connection");
		return 1;
	}
	char *msg = malloc(size);
	pthread_t th;
	if (!msg || pin(tx_cpu) < 0 || pthread_create(&th, NULL, receive, &rx) != 0) {
		fprintf(stderr, "bench_loopback: cannot set up the threads\n");
		return 1;
	}
	memset(msg, 'x', size);

	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	double in_send = 0, start = thread_cpu_us();
	for (long i = 0; i < count; i++) {
		if (gap_us) {
			next.tv_nsec += gap_us * 1000;
			next.tv_sec += next.tv_nsec / 1000000000;
			next.tv_nsec %= 1000000000;
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) ==
			       EINTR)
				;
		}
		double c = thread_cpu_us();
		for (size_t off = 0; off < size;) {
			ssize_t k = send(tx, msg + off, size - off, MSG_NOSIGNAL);
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0) {
				perror("bench_loopback: send");
				return 1;
			}
			off += (size_t)k;
		}
		in_send += thread_cpu_us() - c;
	}
	double total = thread_cpu_us() - start;
	void *failed;
	shutdown(tx, SHUT_WR);
	pthread_join(th, &failed);
	if (failed) {
		fprintf(stderr, "bench_loopback: the receiver failed\n");
		return 1;
	}
	printf("%.2f %.2f\n", in_send / count, total / count);
	free(msg);
	close(tx);
	close(rx.fd);
	return 0;
}
