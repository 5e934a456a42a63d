/* The pod sandbox's only process for e2e/70-containerd-cri.sh: it holds the pod's namespaces
 * open and does nothing else, like the pause image kubelet asks for. Built static so the image
 * needs no libc. Ends on SIGTERM/SIGINT (what StopPodSandbox sends) and reaps any zombie it is
 * handed as PID 1 of the pod's PID namespace. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigemptyset(&on_stop.sa_mask);
    sigemptyset(&on_child.sa_mask);
    if (sigaction(SIGTERM, &on_stop, NULL) || sigaction(SIGINT, &on_stop, NULL) ||
        sigaction(SIGCHLD, &on_child, NULL))
        return EXIT_FAILURE;
    for (;;)
        pause();
}
