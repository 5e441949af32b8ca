/*
 * dv-signal: drives vivid's HDMI input for the board's tests (it lives on
 * the test disk only, never in the system image).
 *
 *   dv-signal NODE mode N          "DV Timings Signal Mode": 0 the current
 *                                  timings, 1 no signal, 2 no lock, 3 out
 *                                  of range
 *   dv-signal NODE timings 720p60|1080p60|1080i60   sets the current timings
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/videodev2.h>

#define VIVID_CID_DV_TIMINGS_SIGNAL_MODE 0x00f0f03e

static int fail(const char *what)
{
	fprintf(stderr, "dv-signal: %s: %s\n", what, strerror(errno));
	return 1;
}

static void cea(struct v4l2_bt_timings *bt, unsigned w, unsigned h, unsigned long long clock,
		unsigned hfp, unsigned hs, unsigned hbp, unsigned vfp, unsigned vs, unsigned vbp)
{
	memset(bt, 0, sizeof(*bt));
	bt->width = w;
	bt->height = h;
	bt->pixelclock = clock;
	bt->hfrontporch = hfp;
	bt->hsync = hs;
	bt->hbackporch = hbp;
	bt->vfrontporch = vfp;
	bt->vsync = vs;
	bt->vbackporch = vbp;
	bt->polarities = V4L2_DV_HSYNC_POS_POL | V4L2_DV_VSYNC_POS_POL;
	bt->standards = V4L2_DV_BT_STD_CEA861;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: dv-signal NODE mode N | timings 720p60|1080p60|1080i60\n");
		return 2;
	}
	int fd = open(argv[1], O_RDWR);
	if (fd < 0)
		return fail(argv[1]);
	if (!strcmp(argv[2], "mode")) {
		struct v4l2_control c = { .id = VIVID_CID_DV_TIMINGS_SIGNAL_MODE, .value = atoi(argv[3]) };
		if (ioctl(fd, VIDIOC_S_CTRL, &c) < 0)
			return fail("VIDIOC_S_CTRL");
	} else if (!strcmp(argv[2], "timings")) {
		struct v4l2_dv_timings t = { .type = V4L2_DV_BT_656_1120 };
		if (!strcmp(argv[3], "720p60"))
			cea(&t.bt, 1280, 720, 74250000ULL, 110, 40, 220, 5, 5, 20);
		else if (!strcmp(argv[3], "1080p60"))
			cea(&t.bt, 1920, 1080, 148500000ULL, 88, 44, 148, 4, 5, 36);
		else if (!strcmp(argv[3], "1080i60")) {
			/* CEA-861 VIC 5: two fields of 540 lines, the second
			 * with one more line of back porch. */
			cea(&t.bt, 1920, 1080, 74250000ULL, 88, 44, 148, 2, 5, 15);
			t.bt.interlaced = V4L2_DV_INTERLACED;
			t.bt.il_vfrontporch = 2;
			t.bt.il_vsync = 5;
			t.bt.il_vbackporch = 16;
		} else
			return 2;
		if (ioctl(fd, VIDIOC_S_DV_TIMINGS, &t) < 0)
			return fail("VIDIOC_S_DV_TIMINGS");
	} else {
		return 2;
	}
	close(fd);
	return 0;
}
