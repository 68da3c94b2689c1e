static int unused_npy;
