/*
 * A stand-in for the device's app with its process tree, for the tests: on
 * the board's test disk (never in the system image), and built for the
 * host by the integration tests. Installed under the app's name
 * (`jetkvm_app`), it runs as either generation of the app:
 *
 *   one_binary    a supervisor executes its own binary again as the app
 *                 (same arguments, JETKVM_CHILD_ID in the environment) and
 *                 waits for it, then exits with its status; the app
 *                 executes the binary a third time with -subcomponent=native,
 *                 in a process group of its own, SIGTERM when the app dies,
 *                 and starts it again a second after it ends. Each writes
 *                 its title over its command line, as the app does.
 *   two_binaries  the app copies its binary to STANDIN_DIR/STANDIN_NATIVE
 *                 and runs that as native (SIGKILL when the app dies),
 *                 starting it again likewise; no supervisor, no titles.
 *
 * Native holds the capture node open while a session is connected and the
 * HDMI signal is present, as the app's does, and closes it otherwise. At
 * start the app writes the device's kvm_config.json in place (truncated,
 * then written, as the app's Go code saves it) from a seed, if there is
 * one; and a system image holding /etc/jetkvm-standin-exit is one whose
 * app cannot start: every process of it exits at once. Where there is a
 * watchdog (/dev/watchdog), the app feeds it every few seconds, as the
 * device's does: a device whose app stops is restarted.
 *
 * Environment (the daemon cannot read another process's):
 *   STANDIN_SHAPE   one_binary (default) or two_binaries
 *   STANDIN_DIR     control files (default /tmp/jetkvm-standin): `session`
 *                   present, a session is connected; `hold-native` present,
 *                   native is not started again until it is removed;
 *                   `signal` present, the signal is there (STANDIN_SIGNAL=file)
 *   STANDIN_VIDEO   the capture node (default /dev/video0)
 *   STANDIN_SIGNAL  query (default: VIDIOC_QUERY_DV_TIMINGS on the node,
 *                   only while a session waits for a signal) or file
 *   STANDIN_TITLES  0: no titles (the first moments of a real start)
 *   STANDIN_NATIVE  the separate native binary's name (default jetkvm_native)
 *   STANDIN_SEED    the kvm_config.json to write (default
 *                   /userdata/jetkvm/standin/kvm_config.json), when it exists
 *   STANDIN_CONFIG  where (default /userdata/kvm_config.json)
 *   STANDIN_WATCHDOG the watchdog to feed (default /dev/watchdog), or none
 *                   (on a host, whose watchdog would reboot it once the
 *                   stand-in stops)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/videodev2.h>

static char **args;
static int nargs;
static pid_t child = -1;

static const char *env(const char *name, const char *fallback)
{
	const char *v = getenv(name);
	return v && *v ? v : fallback;
}

static int control(const char *name)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", env("STANDIN_DIR", "/tmp/jetkvm-standin"), name);
	return access(path, F_OK) == 0;
}

/* The end of the argument and environment strings, which lie end to end:
 * a title may take all of it, as the app's setproctitle does, once the
 * environment is copied elsewhere. */
static char *area_end;

static void keep_environment(void)
{
	extern char **environ;
	int n = 0;
	area_end = args[nargs - 1] + strlen(args[nargs - 1]);
	while (environ[n])
		n++;
	char **copy = calloc(n + 1, sizeof(char *));
	for (int i = 0; copy && i < n; i++) {
		if (environ[i] == area_end + 1)
			area_end = environ[i] + strlen(environ[i]);
		copy[i] = strdup(environ[i]);
	}
	if (copy)
		environ = copy;
}

/* Writes a title over the command line. */
static void title(const char *text)
{
	if (!strcmp(env("STANDIN_TITLES", "1"), "0"))
		return;
	char *start = args[0];
	size_t room = (size_t)(area_end - start);
	memset(start, 0, room + 1);
	memcpy(start, text, strlen(text) < room ? strlen(text) : room);
}

static void forward(int sig)
{
	if (child > 0)
		kill(child, sig);
}

/* Runs `exe` with `argv` as a child; `deathsig` on the parent's death. */
static pid_t start(const char *exe, char *const argv[], int deathsig, int own_group)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	if (own_group)
		setpgid(0, 0);
	prctl(PR_SET_PDEATHSIG, deathsig);
	if (getppid() != parent)
		_exit(0);
	execv(exe, argv);
	_exit(127);
}

static int supervisor(const char *exe)
{
	char line[64];
	setenv("JETKVM_CHILD_ID", "standin", 1);
	/* No death signal: the app outlives a supervisor that is killed. */
	child = start(exe, args, 0, 0);
	snprintf(line, sizeof(line), "jetkvm: [supervisor] started (pid=%d)", (int)child);
	title(line);
	signal(SIGTERM, forward);
	int status = 0;
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static int copy(const char *from, const char *to)
{
	int in = open(from, O_RDONLY | O_CLOEXEC);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	struct stat st;
	int ok = in >= 0 && out >= 0 && fstat(in, &st) == 0 && sendfile(out, in, NULL, st.st_size) == st.st_size;
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return ok ? 0 : -1;
}

/* The device's configuration, written in place from the seed. */
static void write_config(void)
{
	char buf[65536];
	int in = open(env("STANDIN_SEED", "/userdata/jetkvm/standin/kvm_config.json"), O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return;
	ssize_t n = read(in, buf, sizeof(buf));
	close(in);
	int out = open(env("STANDIN_CONFIG", "/userdata/kvm_config.json"), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out >= 0 && n > 0 && write(out, buf, (size_t)n) != n)
		perror("jetkvm_app stand-in: writing kvm_config.json");
	if (out >= 0)
		close(out);
}

/* The app: keeps native running, a second after each end. */
static int app(const char *exe, int two_binaries)
{
	write_config();
	char native[PATH_MAX];
	char *argv[3] = { native, NULL, NULL };
	int deathsig = SIGTERM;
	if (two_binaries) {
		snprintf(native, sizeof(native), "%s/%s", env("STANDIN_DIR", "/tmp/jetkvm-standin"),
			 env("STANDIN_NATIVE", "jetkvm_native"));
		if (copy(exe, native) < 0) {
			perror("jetkvm_app stand-in: copying native");
			return 1;
		}
		deathsig = SIGKILL;
	} else {
		snprintf(native, sizeof(native), "%s", exe);
		argv[1] = "-subcomponent=native";
		title("jetkvm: [app] ready");
	}
	const char *dog = env("STANDIN_WATCHDOG", "/dev/watchdog");
	int watchdog = strcmp(dog, "none") ? open(dog, O_WRONLY | O_CLOEXEC) : -1;
	pid_t pid = start(native, argv, deathsig, 1);
	time_t ended = 0, fed = 0;
	for (;;) {
		time_t now = time(NULL);
		if (watchdog >= 0 && now - fed >= 5) {
			if (write(watchdog, "V", 1) != 1)
				perror("jetkvm_app stand-in: feeding the watchdog");
			fed = now;
		}
		if (pid > 0 && waitpid(pid, NULL, WNOHANG) == pid) {
			pid = -1;
			ended = now;
		}
		if (pid < 0 && now - ended >= 1 && !control("hold-native"))
			pid = start(native, argv, deathsig, 1);
		usleep(200000);
	}
}

static int signal_present(const char *node)
{
	if (!strcmp(env("STANDIN_SIGNAL", "query"), "file"))
		return control("signal");
	int fd = open(node, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	struct v4l2_dv_timings t;
	int ok = fd >= 0 && ioctl(fd, VIDIOC_QUERY_DV_TIMINGS, &t) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* Native: the capture node held while a session is connected and the
 * signal is present. */
static _Noreturn void native(int titled)
{
	const char *node = env("STANDIN_VIDEO", "/dev/video0");
	int fd = -1;
	if (!titled)
		setenv("STANDIN_TITLES", "0", 1);
	title("jetkvm: [native] ready");
	for (;;) {
		int session = control("session");
		if (session && fd < 0 && signal_present(node)) {
			fd = open(node, O_RDWR | O_NONBLOCK | O_CLOEXEC);
			title("jetkvm: [native+video] ready");
		} else if (fd >= 0 && (!session || !signal_present(node))) {
			close(fd);
			fd = -1;
			title("jetkvm: [native] ready");
		}
		usleep(fd < 0 && session ? 1000000 : 200000);
	}
}

int main(int argc, char **argv)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0)
		return 1;
	exe[n] = 0;
	args = argv;
	nargs = argc;
	if (access("/etc/jetkvm-standin-exit", F_OK) == 0) {
		fprintf(stderr, "jetkvm_app stand-in: this system cannot run the app\n");
		return 1;
	}
	keep_environment();
	int two_binaries = !strcmp(env("STANDIN_SHAPE", "one_binary"), "two_binaries");
	const char *name = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	if (two_binaries) {
		if (!strcmp(name, env("STANDIN_NATIVE", "jetkvm_native")))
			native(0);
		return app(exe, 1);
	}
	if (argc > 1 && !strcmp(argv[argc - 1], "-subcomponent=native"))
		native(1);
	return getenv("JETKVM_CHILD_ID") ? app(exe, 0) : supervisor(exe);
}
