#include <stdio.h>
int main(void) {
    fprintf(stderr, "test_annot: not written yet\n");
    return 1;
}
