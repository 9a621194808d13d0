#include <stdio.h>
int main(void) {
    fprintf(stderr, "test_wsync: not written yet\n");
    return 1;
}
