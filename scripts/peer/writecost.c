// Copied from the project's shared tools (../shared/tools/writecost.c) so `scripts/bench.sh peer` runs
// from a clone: build with `gcc -O2 -pthread`.
// Physical-limit probe: server CPU per delivered message when one pre-encoded ~100-byte
// WebSocket text frame is written to N loopback TCP sockets, one write() per socket per message
// (the floor for unbatched fan-out), and with K messages coalesced per write (batched fan-out).
// Optional 4th argument: microseconds to sleep between messages (steady rate, e.g. 50000 = 20 msg/s).
// A separate thread drains the client ends. Prints writer CPU microseconds per delivery.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>

static int N, M, K, GAP_US;
static int *srv, *cli;
static volatile int done;

static void *drain(void *arg) {
  int ep = epoll_create1(0);
  for (int i = 0; i < N; i++) { struct epoll_event ev = {.events = EPOLLIN, .data.fd = cli[i]}; epoll_ctl(ep, EPOLL_CTL_ADD, cli[i], &ev); }
  char buf[65536]; struct epoll_event evs[256];
  while (!done) {
    int n = epoll_wait(ep, evs, 256, 100);
    for (int i = 0; i < n; i++) while (read(evs[i].data.fd, buf, sizeof buf) > 0) {}
  }
  return NULL;
}

static double thread_cpu_us(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }

int main(int argc, char **argv) {
  N = argc > 1 ? atoi(argv[1]) : 1000; M = argc > 2 ? atoi(argv[2]) : 1000; K = argc > 3 ? atoi(argv[3]) : 1; GAP_US = argc > 4 ? atoi(argv[4]) : 0;
  srv = calloc(N, sizeof(int)); cli = calloc(N, sizeof(int));
  int ls = socket(AF_INET, SOCK_STREAM, 0); int one = 1; setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(0x7f000001)};
  bind(ls, (void *)&a, sizeof a); listen(ls, 4096); socklen_t al = sizeof a; getsockname(ls, (void *)&a, &al);
  for (int i = 0; i < N; i++) {
    cli[i] = socket(AF_INET, SOCK_STREAM, 0); connect(cli[i], (void *)&a, sizeof a);
    srv[i] = accept(ls, NULL, NULL); setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(cli[i], F_SETFL, O_NONBLOCK);
  }
  char frame[102]; frame[0] = 0x81; frame[1] = 100; memset(frame + 2, 'x', 100);
  char *batch = malloc(102 * K); for (int k = 0; k < K; k++) memcpy(batch + 102 * k, frame, 102);
  pthread_t th; pthread_create(&th, NULL, drain, NULL);
  double c0 = thread_cpu_us(); struct timespec w0, w1; clock_gettime(CLOCK_MONOTONIC, &w0);
  long deliveries = 0;
  for (int m = 0; m < M; m += K) {
    for (int i = 0; i < N; i++) {
      ssize_t off = 0, len = 102 * K;
      while (off < len) { ssize_t r = write(srv[i], batch + off, len - off); if (r > 0) off += r; else if (errno != EAGAIN && errno != EINTR) { perror("write"); return 1; } }
      deliveries += K;
    }
    if (GAP_US) usleep(GAP_US);  // steady rate: readers go idle between messages, as in real traffic
  }
  double c1 = thread_cpu_us(); clock_gettime(CLOCK_MONOTONIC, &w1);
  done = 1; pthread_join(th, NULL);
  double wall = (w1.tv_sec - w0.tv_sec) + (w1.tv_nsec - w0.tv_nsec) / 1e9;
  printf("{\"sockets\":%d,\"messages\":%d,\"per_write\":%d,\"gap_us\":%d,\"deliveries\":%ld,\"writer_cpu_us_per_delivery\":%.3f,\"wall_deliveries_per_s\":%.0f}\n", N, M, K, GAP_US, deliveries, (c1 - c0) / deliveries, deliveries / wall);
  return 0;
}
