#include <stdio.h>
int main(void) {
    fprintf(stderr, "test_rm: not written yet\n");
    return 1;
}
