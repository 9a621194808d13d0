#include <stdio.h>
int main(void) {
    fprintf(stderr, "test_ppo: not written yet\n");
    return 1;
}
